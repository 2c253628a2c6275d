"""Does the model follow a question in words nobody taught it? The world's held-out questions in new wordings.

    python benchmarks/probe_wordings.py --model checkpoints/tiny/final --data data/shapes
    python benchmarks/probe_wordings.py --model checkpoints/tiny/final --data data/shapes --chat    # as in chat.py
    python benchmarks/probe_wordings.py --model checkpoints/tiny/final --data data/shapes --limit 500 --out probe.json

The report's "held-out phrasings" are wordings the teacher owns (llava_mini/synth/phrasings.py) and keeps out of every
training file. The wordings below were written by hand apart from the teacher, in the ways a student asks ("Where's
the red star?", "Can you tell me the colour of the square?", "Do you notice a green circle?"), and are in neither
of its sets (a test checks it): the nearest measure here of the questions a classroom asks. Each question of
test.json is asked twice, as written and in one of these wordings (drawn with a fixed seed), about the same image,
with LLaVA-1.5's short-answer prompt; it prints accuracy and off-type replies (an answer of another question's kind)
per question type, and per new wording the ones it gets wrong most.

--chat asks as a student does in chat.py: the bare question, no short-answer prompt, so the model answers in a
sentence ("The star is blue."), from which `scoring.answer_in_sentence` reads the short answer it states
(evaluate_vqa with chat=True; the report's "chat" line is this on the questions as written).

Keep these wordings out of phrasings.py: the day one of them is trained on, this probe measures less.
"""
from __future__ import annotations

import os
import random
import sys
from collections import defaultdict

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from llava_mini import cli  # noqa: E402
from llava_mini.eval.evaluate import evaluate_vqa  # noqa: E402
from llava_mini.eval.scoring import normalize_answer  # noqa: E402
from llava_mini.jsonio import read_json, write_json  # noqa: E402
from llava_mini.loading.model_folder import load_checkpoint  # noqa: E402
from llava_mini.synth.phrasings import question_parser  # noqa: E402
from llava_mini.synth.world import WorldConfig, vocabulary  # noqa: E402

# Per question type, wordings over the same fields as phrasings.QUESTIONS (color, noun, nouns, name, a_name).
NEW_WORDINGS = {
    "count": ("How many shapes do you count?", "What's the total number of objects?",
              "How many figures are drawn here?", "Could you count the things in this image?",
              "Number of shapes in the picture?"),
    "count_color": ("How many {color} ones are there?", "How many things in the picture are {color}?",
                    "What's the count of {color} shapes?", "Count how many objects are {color}."),
    "count_shape": ("How many {nouns} do you see?", "Count how many {nouns} there are.",
                    "How many {nouns} appear in the picture?", "What's the number of {nouns} here?"),
    "color": ("What's the colour of the {noun}?", "Which color is the {noun}?", "What color does the {noun} have?",
              "Can you tell me the colour of the {noun}?", "The {noun} in the picture, what color is it?"),
    "shape": ("What's the {color} shape?", "Which shape is the {color} one?", "What is the {color} object?",
              "Can you name the shape that is {color}?", "What shape has the colour {color}?"),
    "position": ("Where's the {name}?", "Can you tell me where the {name} is?", "Where can I find the {name}?",
                 "Where does the {name} appear in the image?", "Where is the {name} in this picture?"),
    "exists": ("Do you notice {a_name}?", "Can I see {a_name} in this image?", "Does the image have {a_name}?",
               "Is {a_name} in the picture?", "Is there {a_name} anywhere?"),
}


def reworded(questions: list[dict], parse, seed: int = 0) -> list[dict]:
    """Each question in one new wording of its kind, filled with the fields `parse` reads from its own words."""
    rng, out = random.Random(seed), []
    for q in questions:
        parsed = parse(q["question"])
        if parsed is None or parsed[0] not in NEW_WORDINGS:
            raise ValueError(f"question {q['id']}: {q['question']!r} is no wording of phrasings.py this probe knows")
        wording = rng.choice(NEW_WORDINGS[parsed[0]])
        out.append({**q, "question": wording.format(**parsed[2]), "wording": wording})
    return out


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a LLaVA folder (python train.py leaves checkpoints/tiny/final)")
    p.add_argument("--data", required=True, help="the world's folder: test.json and images/")
    p.add_argument("--limit", type=cli.positive_int, default=None, help="the first N questions of test.json")
    p.add_argument("--seed", type=cli.non_negative_int, default=0, help="which new wording each question gets")
    p.add_argument("--chat", action="store_true", help="no short-answer prompt: read the answer from the sentence")
    p.add_argument("--threads", type=cli.positive_int, default=2)
    p.add_argument("--out", help="write the figures and every reply here (JSON)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    written = read_json(os.path.join(args.data, "test.json"))[:args.limit]
    new = reworded(written, question_parser(vocabulary(WorldConfig())), args.seed)
    model, tokenizer, template = load_checkpoint(args.model)
    model.eval()
    with torch.no_grad():
        runs = {name: evaluate_vqa(model, tokenizer, qs, args.data, template=template, chat=args.chat)
                for name, qs in (("as written", written), ("new wordings", new))}
    print(f"{args.model} on {len(written)} questions of {args.data}/test.json, "
          + ("asked as in chat (no short-answer prompt)" if args.chat else "with the short-answer prompt"))
    print(f"  {'type':12s} {'as written':>11s} {'new wordings':>13s}   (off-type replies)")
    for t in sorted(runs["as written"]["per_type"]):
        cells = [f"{r['per_type'][t]:.1%} ({r['off_type_per_type'][t]:.1%})" for r in runs.values()]
        print(f"  {t:12s} {cells[0]:>17s} {cells[1]:>17s}")
    cells = [f"{r['overall']:.1%} ({r['off_type']:.1%})" for r in runs.values()]
    print(f"  {'overall':12s} {cells[0]:>17s} {cells[1]:>17s}")
    hits, n = defaultdict(int), defaultdict(int)
    for q, pred in zip(new, runs["new wordings"]["predictions"]):
        n[q["wording"]] += 1
        hits[q["wording"]] += normalize_answer(pred["prediction"]) == normalize_answer(str(q["answer"]))
    print("  the new wordings it follows least:")
    for w in sorted(n, key=lambda w: hits[w] / n[w])[:5]:
        print(f"    {hits[w] / n[w]:6.1%} of {n[w]:3d}  {w}")
    if args.out:
        write_json({"model": args.model, "questions": len(written), "chat": args.chat,
                    **{name: {k: v for k, v in r.items() if k != "predictions"} for name, r in runs.items()},
                    "per_wording": {w: hits[w] / n[w] for w in n},
                    "replies": [{**pred, "question": q["question"]}
                                for q, pred in zip(new, runs["new wordings"]["predictions"])]}, args.out)


if __name__ == "__main__":
    cli.run(main)
