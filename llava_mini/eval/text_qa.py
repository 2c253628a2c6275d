"""Can a text-only LLM answer the world's questions from the scene in words? The ability LLaVA's recipe takes for granted.

    python -m llava_mini.eval.text_qa --llm weights/tiny/tiny-llama --data data/shapes
    python -m llava_mini.eval.text_qa --llm weights/tiny/tiny-llama --data data/shapes --questions 300   # quicker

LLaVA starts from an LLM that already answers questions about a scene it is told about: given "a red circle and a
blue star", Vicuna says how many red things there are. Stages 1 and 2 then teach it to take the scene from image
tokens instead of words. This measures that starting point: each held-out world question is asked with the scene in
words where the image would be (world.scene_in_words: its captions and where each object is; the form
weights/make_tiny.py trains the LM on), with LLaVA-1.5's short-answer
prompt, answered greedily, and scored like the image questions (normalised exact match, seen and held-out phrasings
apart). An LLM near the blind rate here has nothing for LLaVA to build on.
"""
from __future__ import annotations

import os

import torch
from tqdm import tqdm

from llava_mini import cli
from llava_mini.data.conversation import SHORT_ANSWER_PROMPT, get_template, stop_token_ids, tokenize_prompt
from llava_mini.data.tokenizer import Tokenizer
from llava_mini.eval.evaluate import right_pad
from llava_mini.eval.scoring import vqa_accuracy
from llava_mini.jsonio import read_json
from llava_mini.synth.world import scene_in_words

TEMPLATE = "vicuna_v1"      # the tiny LLaMA's chat template (weights/make_tiny.py)


def text_prompt(tokenizer: Tokenizer, description: str, question: str, template: str = TEMPLATE) -> list[int]:
    """The generation prompt for `question` with the scene in words where the image would be."""
    return tokenize_prompt(tokenizer, [f"{description}\n{question}{SHORT_ANSWER_PROMPT}"], template)


@torch.no_grad()
def text_qa(llm, tokenizer: Tokenizer, scenes: list[dict], questions: list[dict], template: str = TEMPLATE,
            batch_size: int = 64) -> dict:
    """vqa_accuracy of `llm` on `questions`, each asked about its scene in words (scenes: the world's scenes)."""
    described = {s["id"]: scene_in_words(s) for s in scenes}
    prompts = [text_prompt(tokenizer, described[q["id"].rsplit("_", 1)[0]], q["question"], template)
               for q in questions]
    stop, answers = stop_token_ids(tokenizer, get_template(template)), []
    for start in tqdm(range(0, len(prompts), batch_size), desc="text QA", disable=len(prompts) <= batch_size):
        input_ids, segment_ids = right_pad(prompts[start:start + batch_size], tokenizer.pad_id)
        out = llm.generate(input_ids, attention_mask=segment_ids, max_new_tokens=8, stop_token_ids=stop)
        answers += [tokenizer.decode(t).strip() for t in out.tokens]
    return vqa_accuracy(questions, answers)


def main(argv=None):
    from llava_mini.loading import weights
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", default="weights/tiny/tiny-llama", help="LLaMA checkpoint folder with tokenizer.json")
    p.add_argument("--data", default="data/shapes", help="shapes world folder")
    p.add_argument("--questions", type=cli.positive_int, default=None, help="score the first N held-out questions (default all)")
    p.add_argument("--threads", type=cli.positive_int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = weights.load_llama(args.llm).eval()
    tokenizer = Tokenizer.from_file(os.path.join(args.llm, "tokenizer.json"))
    result = text_qa(llm, tokenizer, read_json(os.path.join(args.data, "scenes_test.json")),
                     read_json(os.path.join(args.data, "test.json"))[:args.questions])
    print(f"{args.llm}: held-out world questions answered from the scene in words, {result['overall']:.1%} "
          f"(n={result['n']})")
    for t, acc in result["per_type"].items():
        print(f"  {t:12s} {acc:6.1%}   n={result['count_per_type'][t]}")
    for k, acc in result.get("per_phrasing", {}).items():
        print(f"  {k} phrasings {acc:6.1%}")
    return result


if __name__ == "__main__":
    cli.run(main)
