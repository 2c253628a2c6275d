"""Does an LLM bind an attribute to the object it is asked about? The look-up alone, on the simplest scenes in words.

    python benchmarks/probe_lookup.py --llm weights/tiny/tiny-llama                # the shipped tiny LLaMA
    python benchmarks/probe_lookup.py --from-scratch 1500                         # a new one, trained on this alone
    python benchmarks/probe_lookup.py --from-scratch 1500 --reference            # the same in transformers' LLaMA
    python benchmarks/probe_lookup.py --from-scratch 1500 --objects 2 --tokenizer /tmp/tok.json --init-std 0.1

Each scene is one caption of the world's form ("A picture of 3 shapes: an orange diamond, a red star and a white
rectangle."), its objects all of different colours and different shapes, so each question has one right answer and
every other object gives a wrong one. It asks, in the world's seen phrasings and with LLaVA-1.5's short-answer
prompt, the colour of one shape or the shape of one colour, and reports three rates:
- right: the attribute of the object asked about;
- in the scene: an attribute of *some* object of the scene (an LLM that read the scene but did not bind);
- chance in the scene: the mean of 1 / the number of objects, what picking one of the scene's objects scores.
"right" near "chance in the scene" with "in the scene" near 100% means the LLM knows what is there but not which
colour goes with which shape: what docs/EXPERIMENTS.md (2026-12-06) measures for the tiny LLaMA. The same three rates
for a plainer test of the circuit the look-up needs (induction_items): the scene listed twice, the shape after its
colour on the second listing, which only copying from the first listing gets right.

--from-scratch STEPS trains a new LLaMA of the classroom's shape (recipes.CLASSROOM.bases, the shipped tokenizer)
on nothing but these questions (answers only, batch 32, AdamW with weight decay 0.1, warmup + cosine: the stage-0
recipe, weights/tiny_llama.py), on padded batches so that `--reference` can run the identical loop, from the identical
initial weights, in `transformers.LlamaForCausalLM` (a test-only dependency): if both stay at chance, the look-up is
hard to learn at this size, not broken in our model.
"""
from __future__ import annotations

import os
import random
import sys
import time

import torch
from tqdm import tqdm

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from llava_mini import cli  # noqa: E402
from llava_mini.data.conversation import (SHORT_ANSWER_PROMPT, get_template, stop_token_ids,  # noqa: E402
                                         tokenize_conversation)
from llava_mini.data.tokenizer import Tokenizer  # noqa: E402
from llava_mini.eval.evaluate import right_pad  # noqa: E402
from llava_mini.eval.text_qa import TEMPLATE, text_prompt  # noqa: E402
from llava_mini.model.llama import LlamaForCausalLM  # noqa: E402
from llava_mini.synth.phrasings import article, ask  # noqa: E402
from llava_mini.synth.world import BACKGROUND, SHAPES  # noqa: E402
from llava_mini.training.recipes import CLASSROOM  # noqa: E402
from weights.base_training import init_weights, warmup_cosine  # noqa: E402
from weights.tiny_llama import text_config  # noqa: E402
from weights.world_text import listed_scene  # noqa: E402

SHIPPED = os.path.normpath(os.path.join(ROOT, "weights", "tiny", "tiny-llama"))


def lookup_items(n: int, rng: random.Random, objects: tuple[int, int] = (2, 4)) -> list[dict]:
    """`n` questions {scene, question, answer, options}: a one-caption scene of distinct colours and shapes, and the
    colour of one of its shapes or the shape of one of its colours; `options` are the scene's answers of that kind."""
    items = []
    for _ in range(n):
        colors, shapes, scene = listed_scene(rng, objects)
        i = rng.randrange(len(colors))
        if rng.random() < 0.5:
            items.append({"scene": scene, "question": ask("color", rng, noun=shapes[i]), "answer": colors[i],
                          "options": colors})
        else:
            items.append({"scene": scene, "question": ask("shape", rng, color=colors[i]), "answer": shapes[i],
                          "options": shapes})
    return items


def score(items: list[dict], answers: list[str]) -> dict:
    """The three rates of the module docstring, from the model's answers (lower-cased, stripped)."""
    said = [a.strip().lower().rstrip(".") for a in answers]
    n = max(1, len(items))
    return {"right": sum(a == it["answer"] for a, it in zip(said, items)) / n,
            "in_scene": sum(a in it["options"] for a, it in zip(said, items)) / n,
            "chance_in_scene": sum(1 / len(it["options"]) for it in items) / n, "n": len(items)}


@torch.no_grad()
def probe(llm, tokenizer: Tokenizer, items: list[dict], batch_size: int = 64) -> dict:
    """Greedy short answers of `llm` (our LlamaForCausalLM) to `items`, scored."""
    llm.eval()
    stop, answers = stop_token_ids(tokenizer, get_template(TEMPLATE)), []
    prompts = [text_prompt(tokenizer, it["scene"], it["question"]) for it in items]
    for start in range(0, len(prompts), batch_size):
        input_ids, segment_ids = right_pad(prompts[start:start + batch_size], tokenizer.pad_id)
        out = llm.generate(input_ids, attention_mask=segment_ids, max_new_tokens=6, stop_token_ids=stop)
        answers += [tokenizer.decode(t) for t in out.tokens]
    return score(items, answers)


def induction_items(n: int, rng: random.Random, objects: tuple[int, int] = (2, 4)) -> list[dict]:
    """`n` copying tests {prefix, answer, options}: a scene listed once ("A picture of 3 shapes: a red star, ..."),
    then again in another order, cut after one colour ("3 shapes on a plain pale blue background: a blue"). The next
    word is that colour's shape, known only by copying what followed the colour the first time: what an induction
    head does (Olsson et al., 2022)."""
    items = []
    for _ in range(n):
        colors, shapes, scene = listed_scene(rng, objects)
        i = rng.randrange(len(colors))
        prefix = f"{scene} {len(colors)} shapes on a plain {BACKGROUND[0]} background: {article(colors[i])}"
        items.append({"prefix": prefix, "answer": shapes[i], "options": shapes})
    return items


@torch.no_grad()
def probe_induction(llm, tokenizer: Tokenizer, items: list[dict]) -> dict:
    """Greedy continuation of each induction item's prefix (plain text, no chat template): its first word, scored."""
    llm.eval()
    answers = []
    for it in items:
        out = llm.generate(torch.tensor([tokenizer.encode(it["prefix"], add_bos=True)]), max_new_tokens=3)
        words = tokenizer.decode(out.tokens[0]).replace(",", " ").split()
        answers.append(words[0] if words else "")
    return score(items, answers)


def reference_llama(ours: LlamaForCausalLM):
    """transformers' LlamaForCausalLM with our model's config and weights (the key names are HF's)."""
    import transformers
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**ours.config.to_hf(), attn_implementation="sdpa"))
    hf.load_state_dict(ours.state_dict(), strict=False)      # strict=False: HF keeps no separate lm_head when tied
    hf.tie_weights()
    return hf


def train_from_scratch(tokenizer: Tokenizer, steps: int, *, objects=(2, 4), lr: float = 3e-3, batch_size: int = 32,
                       init_std: float = 0.02, reference: bool = False, seed: int = 0) -> LlamaForCausalLM:
    """A new classroom-shaped LLaMA trained on look-up chats alone (answers only); returned as our model (with
    `reference`, trained as transformers' LlamaForCausalLM and its weights copied back)."""
    torch.manual_seed(seed)
    ours = init_weights(LlamaForCausalLM(text_config(CLASSROOM.bases, tokenizer)), std=init_std)
    model = reference_llama(ours) if reference else ours
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, max(1, steps // 20)))
    rng = random.Random(f"{seed}:train")
    bar = tqdm(range(steps), desc="look-up from scratch" + (" (transformers)" if reference else ""))
    for _ in bar:
        chats = [tokenize_conversation(tokenizer, [f"{it['scene']}\n{it['question']}{SHORT_ANSWER_PROMPT}",
                                                   it["answer"]], TEMPLATE)
                 for it in lookup_items(batch_size, rng, objects)]
        input_ids, mask = right_pad([ids for ids, _ in chats], tokenizer.pad_id)
        labels = torch.full_like(input_ids, -100)
        for row, (_, lab) in enumerate(chats):
            labels[row, :len(lab)] = torch.tensor(lab)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss   # (B, T) 0/1: both read it
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    if reference:
        ours.load_state_dict({k: v for k, v in model.state_dict().items() if k in ours.state_dict()}, strict=False)
    return ours


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", default=SHIPPED, help="a LLaMA folder with tokenizer.json (ignored with --from-scratch)")
    p.add_argument("--from-scratch", type=cli.positive_int, metavar="STEPS", default=None,
                   help="train a new classroom-shaped LLaMA on the look-up alone for STEPS steps, then probe it")
    p.add_argument("--reference", action="store_true", help="with --from-scratch: train transformers' LLaMA instead")
    p.add_argument("--tokenizer", default=os.path.join(SHIPPED, "tokenizer.json"), help="with --from-scratch")
    p.add_argument("--objects", type=cli.positive_int, nargs="+", default=[2, 4], metavar="N",
                   help="objects per scene: one number, or the least and the most")
    p.add_argument("--lr", type=cli.positive_float, default=3e-3)
    p.add_argument("--init-std", type=cli.positive_float, default=0.02)
    p.add_argument("--questions", type=cli.positive_int, default=600)
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--threads", type=cli.positive_int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    objects = (args.objects[0], args.objects[-1])
    if objects[0] > objects[1] or objects[1] > len(SHAPES):
        p.error(f"--objects {' '.join(map(str, args.objects))}: want 1 to {len(SHAPES)}, the least first")
    t0 = time.time()
    if args.from_scratch:
        tokenizer = Tokenizer.from_file(args.tokenizer)
        llm = train_from_scratch(tokenizer, args.from_scratch, objects=objects, lr=args.lr, init_std=args.init_std,
                                 reference=args.reference, seed=args.seed)
        name = f"a new LLaMA after {args.from_scratch} steps" + (" (trained in transformers)" if args.reference else "")
    else:
        from llava_mini.loading import weights
        llm, name = weights.load_llama(args.llm), os.path.relpath(args.llm)
        tokenizer = Tokenizer.from_file(os.path.join(args.llm, "tokenizer.json"))
    rng = random.Random(f"{args.seed}:probe")
    result = {"lookup": probe(llm, tokenizer, lookup_items(args.questions, rng, objects)),
              "induction": probe_induction(llm, tokenizer, induction_items(args.questions, rng, objects))}
    print(f"{name} ({objects[0]}-{objects[1]} objects, {time.time() - t0:.0f} s):")
    for what, r in (("look-up (the colour of a shape, the shape of a colour)", result["lookup"]),
                    ("copying (the shape after its colour, listed again)", result["induction"])):
        print(f"  {what}: right {r['right']:.1%}, in the scene {r['in_scene']:.1%}, chance in the scene "
              f"{r['chance_in_scene']:.1%} (n={r['n']})")
    return result


if __name__ == "__main__":
    cli.run(main)
