"""Can the tiny LLM answer the world's questions from the scene in words? The ability LLaVA's recipe takes for granted.

    python benchmarks/text_qa.py --llm checkpoints/base/tiny-llama --data data/shapes
    python benchmarks/text_qa.py --llm checkpoints/base/tiny-llama --data data/shapes --questions 300   # quicker

LLaVA starts from an LLM that already answers questions about a scene it is told about: given "a red circle and a
blue star", Vicuna says how many red things there are. Stage 1 and 2 then teach it to take the scene from image
tokens instead of words. This measures that starting point for the classroom's stand-in LLM: each held-out world
question is asked with the scene's captions where the image would be (the form weights/make_tiny.py trains the LM on,
see read_world_text), answered greedily, and scored like the image questions (normalised exact match). An LLM near
the blind rate here has little reasoning for LLaVA to build on; docs/EXPERIMENTS.md has the figures.
"""
import argparse
import os
import sys

import torch
from tqdm import tqdm

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from llava_mini.data.conversation import SHORT_ANSWER_PROMPT, tokenize_prompt  # noqa: E402
from llava_mini.data.tokenizer import Tokenizer  # noqa: E402
from llava_mini.eval.scoring import vqa_accuracy  # noqa: E402
from llava_mini.jsonio import read_json  # noqa: E402
from llava_mini.loading import weights  # noqa: E402
from weights.make_tiny import CHAT_TEMPLATE, scene_in_words  # noqa: E402


def text_prompt(tokenizer: Tokenizer, description: str, question: str) -> list[int]:
    """The generation prompt for `question` with the scene in words where the image would be."""
    return tokenize_prompt(tokenizer, [f"{description}\n{question}{SHORT_ANSWER_PROMPT}"], CHAT_TEMPLATE)


@torch.no_grad()
def text_qa(llm, tokenizer: Tokenizer, data_dir: str, n_questions: int | None = None) -> dict:
    """vqa_accuracy of `llm` on the first `n_questions` held-out world questions, asked about the captions."""
    described = {s["id"]: scene_in_words(s) for s in read_json(os.path.join(data_dir, "scenes_test.json"))}
    questions = read_json(os.path.join(data_dir, "test.json"))[:n_questions]
    answers = []
    for q in tqdm(questions, desc="text QA", disable=len(questions) < 100):
        ids = text_prompt(tokenizer, described[q["id"].rsplit("_", 1)[0]], q["question"])
        out = llm.generate(torch.tensor([ids]), max_new_tokens=8, stop_token_ids=(tokenizer.eos_id,))
        answers.append(tokenizer.decode(out.tokens[0]))
    return vqa_accuracy(questions, answers)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", default="checkpoints/base/tiny-llama", help="LLaMA checkpoint folder with tokenizer.json")
    p.add_argument("--data", default="data/shapes", help="shapes world folder")
    p.add_argument("--questions", type=int, default=None, help="score the first N held-out questions (default all)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = weights.load_llama(args.llm).eval()
    result = text_qa(llm, Tokenizer.from_file(os.path.join(args.llm, "tokenizer.json")), args.data, args.questions)
    print(f"{args.llm}: held-out world questions answered from the captions in text, {result['overall']:.1%} "
          f"(n={result['n']})")
    for t, acc in result["per_type"].items():
        print(f"  {t:12s} {acc:6.1%}   n={result['count_per_type'][t]}")
    return result


if __name__ == "__main__":
    main()
