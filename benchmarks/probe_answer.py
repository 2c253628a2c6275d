"""Where a trained LLaVA model loses what it is asked: linear probes of the answer at the answer position, per layer.

    python benchmarks/probe_answer.py --model checkpoints/tiny/final --data data/shapes

benchmarks/probe_tower.py shows what the LLM *receives* (the projector's outputs, per object). This shows what the LLM
*gathers*: for each short-answer question, the hidden state after every decoder layer at the last prompt position (the
one that predicts the answer's first token), probed linearly for the right answer. Questions are asked the way
evaluation asks them (alone, with the short-answer prompt). Train-side questions are the single turns of the stage-2
short-answer samples (`stage2.json`); held-out ones are `test.json`. Kinds whose answers are names (position,
shape, colour) are probed; counts and yes/no are left out. Chance is 1 / the number of answers.

If the tower probe is high and these are low, the answer's information reaches the LLM but is not gathered where
the answer is spoken: the failure is the LLM's look-up or readout, not the features (docs/EXPERIMENTS.md, "Where position is lost").
"""
import os
import sys
from collections import defaultdict

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from llava_mini import cli  # noqa: E402
from llava_mini.data.conversation import SHORT_ANSWER_PROMPT, tokenize_prompt  # noqa: E402
from llava_mini.data.images import load_image, preprocess_image  # noqa: E402
from llava_mini.data.tokenizer import Tokenizer  # noqa: E402
from llava_mini.eval.evaluate import right_pad  # noqa: E402
from llava_mini.jsonio import read_json  # noqa: E402
from llava_mini.loading import weights  # noqa: E402
from llava_mini.synth import world  # noqa: E402
from llava_mini.synth.teacher import POSITION_NAMES  # noqa: E402
from weights.tiny_clip import linear_probe  # noqa: E402

KINDS = {"position": POSITION_NAMES, "shape": world.SHAPES, "color": tuple(world.COLORS)}


def kind_of(answer: str) -> str | None:
    return next((k for k, names in KINDS.items() if answer in names), None)


def train_questions(stage2: list[dict]) -> list[dict]:
    """The single turns of the short-answer samples: {"image", "question", "answer"} (prompt and <image> removed)."""
    out = []
    for e in stage2:
        if not e["id"].endswith("_vqa"):
            continue
        turns = e["conversations"]
        for q, a in zip(turns[::2], turns[1::2]):
            text = q["value"].replace("<image>\n", "").removesuffix(SHORT_ANSWER_PROMPT)
            out.append({"image": e["image"], "question": text, "answer": a["value"]})
    return out


@torch.no_grad()
def answer_states(model, tokenizer, questions: list[dict], image_root: str, template: str,
                  batch_size: int = 32) -> torch.Tensor:
    """Each decoder layer's output at each question's last prompt position: (n_questions, n_layers, hidden)."""
    layers = model.language_model.model.layers
    caught = [None] * len(layers)
    hooks = [layer.register_forward_hook(lambda m, args, out, i=i: caught.__setitem__(i, out[0]))
             for i, layer in enumerate(layers)]
    states = []
    try:
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            ids = [tokenize_prompt(tokenizer, ["<image>\n" + q["question"] + SHORT_ANSWER_PROMPT], template)
                   for q in chunk]
            input_ids, segment_ids = right_pad(ids, tokenizer.pad_id)
            pixels = torch.stack([preprocess_image(load_image(os.path.join(image_root, q["image"])),
                                                   model.config.vision_config, model.config.image_aspect_ratio)
                                  for q in chunk])
            merged = model.prepare_inputs(input_ids, pixels, segment_ids)
            model.language_model.model(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask)
            last = merged.attention_mask.sum(1) - 1                                       # (B,) last real position
            states.append(torch.stack([h[torch.arange(len(chunk)), last] for h in caught], 1))   # (B, L, hidden)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(states)


def probe_answers(model, tokenizer, data_dir: str, template: str, n_train: int = 1500) -> dict:
    """{kind: [held-out probe accuracy after layer 0, 1, ...]} for the position, shape and colour questions."""
    by_kind = {"train": defaultdict(list), "test": defaultdict(list)}
    for split, questions in (("train", train_questions(read_json(os.path.join(data_dir, "stage2.json")))),
                             ("test", read_json(os.path.join(data_dir, "test.json")))):
        for q in questions:
            if kind := kind_of(q["answer"]):
                by_kind[split][kind].append(q)
    result = {}
    for kind, names in KINDS.items():
        train, test = by_kind["train"][kind][:n_train], by_kind["test"][kind]
        if not train or not test:
            continue
        x_train = answer_states(model, tokenizer, train, data_dir, template)
        x_test = answer_states(model, tokenizer, test, data_dir, template)
        y_train = torch.tensor([names.index(q["answer"]) for q in train])
        y_test = torch.tensor([names.index(q["answer"]) for q in test])
        result[kind] = [linear_probe(x_train[:, i], y_train, x_test[:, i], y_test, len(names))
                        for i in range(x_train.shape[1])]
    return result


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="checkpoints/tiny/final", help="a trained LLaVA checkpoint folder")
    p.add_argument("--data", default="data/shapes", help="shapes world folder (stage2.json, test.json, images)")
    p.add_argument("--train-questions", type=cli.positive_int, default=1500, help="per kind, to fit each probe")
    args = p.parse_args(argv)
    model = weights.load_llava(args.model).eval()
    tokenizer = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    template = read_json(os.path.join(args.model, "llava_mini.json"))["template"]
    result = probe_answers(model, tokenizer, args.data, template, args.train_questions)
    print(f"{args.model}: held-out linear-probe accuracy of the answer at the answer position, after each layer")
    for kind, accs in result.items():
        print(f"  {kind:9s} " + "  ".join(f"{a:6.1%}" for a in accs) + f"   (chance {1 / len(KINDS[kind]):.1%})")
    return result


if __name__ == "__main__":
    cli.run(main)
