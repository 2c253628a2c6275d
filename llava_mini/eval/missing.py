"""Questions about objects that are not there: does the model say so, or make up an answer?

    questions = missing_object_questions(scenes, vocabulary)   # per scene: one absent object, one present one
    denies("There is no red circle in the image.", "red circle")   # -> True
    summary = missing_summary(questions, answers)
    asked = presence_questions(scenes, vocabulary)             # "Is there a star?", in a seen and a held-out wording
    summary["presence"] = presence_summary(asked, answers)

"Where is the red circle?" about an image without one has one right answer: there is none. A model that only met
such questions about objects that were there names a place anyway. Each held-out scene gets two questions in the
same words: one about an object it does not have (half the time one that shares a colour or a shape with an object
it has, the hard case: knowing the colours and the shapes present is not enough) and, as the control, one about an
object it has, where "there is none" is the wrong answer. An answer denies an object when the rule judge's parser
(synth/claims.py) reads a count of zero for it.

Students also ask about one attribute alone: "Is there a star?", "Is anything red?", "Which one is the biggest?"
(instruct_data.presence writes them for stage 2, present and absent half and half). Each held-out scene gets one in
a seen wording and one in a held-out wording, which no training file holds; a yes/no answer is right when its first
word is (or, without one, when the counts it states are zero exactly when the truth says no), the largest object
when the first object the answer names is it.
"""
from __future__ import annotations

import random
import re

from llava_mini.synth.claims import extract_claims
from llava_mini.synth.instruct_data import presence
from llava_mini.synth.phrasings import COLOR_WORDS
from llava_mini.synth.teacher import negative_names, parse_objects, split_name, symbolic_context

QUESTION = "Where is the {name}?"


def missing_object_questions(scenes: list[dict], vocabulary: list[str], seed: int = 0) -> list[dict]:
    """[{"image", "question", "name", "present", "hard"}]: per scene, an absent object and a present one that is
    the only one of its name (so that "where" has one answer)."""
    out = []
    for s in scenes:
        rng = random.Random(f"{seed}:{s['id']}:missing")
        objs = parse_objects(symbolic_context(s)["boxes"])
        colors, nouns = {o["color"] for o in objs}, {o["noun"] for o in objs}
        name = rng.choice(negative_names(objs, vocabulary, rng))
        color, noun = split_name(name)
        out.append({"image": s["image"], "question": QUESTION.format(name=name), "name": name, "present": False,
                    "hard": color in colors or noun in nouns})
        names = [o["name"] for o in objs]
        unique = [n for n in names if names.count(n) == 1]
        if unique:
            there = rng.choice(unique)
            out.append({"image": s["image"], "question": QUESTION.format(name=there), "name": there, "present": True,
                        "hard": False})
    return out


def denies(answer: str, name: str) -> bool:
    """The answer says there is no `name` ("There is no red circle in the image.", "No red circles.")."""
    color, noun = split_name(name)
    return any(c.kind == "count" and c.number == 0 and c.shape == noun and c.color in (None, color)
               for c in extract_claims(answer))


def missing_summary(questions: list[dict], answers: list[str]) -> dict:
    """The share of absent objects denied (all, and the hard ones that share a colour or a shape with an object
    present), and of present objects wrongly denied."""
    def share(keep) -> float:
        picked = [denies(a, q["name"]) for q, a in zip(questions, answers) if keep(q)]
        return sum(picked) / len(picked) if picked else 0.0

    return {"absent_denied": share(lambda q: not q["present"]),
            "absent_hard_denied": share(lambda q: not q["present"] and q["hard"]),
            "present_denied": share(lambda q: q["present"]),
            "n_absent": sum(not q["present"] for q in questions), "n_present": sum(q["present"] for q in questions)}


def missing_line(m: dict) -> str:
    return (f"\"Where is the X?\" about an object the image does not have: \"there is none\" in "
            f"{m['absent_denied']:.1%} (n={m['n_absent']}; sharing a colour or a shape with one it has: "
            f"{m['absent_hard_denied']:.1%}); about one it has: {m['present_denied']:.1%} (n={m['n_present']})")


def presence_questions(scenes: list[dict], vocabulary: list[str], seed: int = 0) -> list[dict]:
    """[{"image", "question", "truth", "phrasing"}]: per scene, instruct_data.presence in a seen and in a held-out
    wording, each drawn on its own."""
    out = []
    for s in scenes:
        boxes = symbolic_context(s)["boxes"]
        for phrasing in ("seen", "heldout"):
            rng = random.Random(f"{seed}:{s['id']}:presence:{phrasing}")
            question, truth = presence(boxes, vocabulary, rng, heldout=phrasing == "heldout")
            out.append({"image": s["image"], "question": question, "truth": truth, "phrasing": phrasing})
    return out


NAMED_RE = re.compile(rf"\b({'|'.join(sorted(COLOR_WORDS))}) ([a-z]+)")


def presence_right(answer: str, truth: str) -> bool:
    """Does the answer say what the truth says? Yes/no by its first word, or by its counts (zero means no); the
    largest object by the first coloured object it names."""
    if truth.startswith("The largest object is the "):
        named = NAMED_RE.search(answer.lower())
        return bool(named) and named.group(0) == truth.removeprefix("The largest object is the ").rstrip(".")
    first = re.match(r"\W*(yes|no)\b", answer.lower())
    if first:
        said_no = first.group(1) == "no"
    else:
        counts = [c.number for c in extract_claims(answer) if c.kind == "count"]
        if not counts:
            return False
        said_no = all(n == 0 for n in counts)
    return said_no == truth.startswith("No")


def presence_summary(questions: list[dict], answers: list[str]) -> dict:
    """The share right, overall, per wording (seen, heldout) and per truth (yes, no, largest)."""
    def truth_kind(truth: str) -> str:
        return "largest" if truth.startswith("The largest") else "no" if truth.startswith("No") else "yes"
    right = [presence_right(a, q["truth"]) for q, a in zip(questions, answers)]

    def share(keep) -> dict:
        picked = [r for q, r in zip(questions, right) if keep(q)]
        return {"right": sum(picked) / len(picked) if picked else 0.0, "n": len(picked)}
    return {**share(lambda q: True),
            "per_phrasing": {p: share(lambda q, p=p: q["phrasing"] == p) for p in ("seen", "heldout")},
            "per_truth": {t: share(lambda q, t=t: truth_kind(q["truth"]) == t) for t in ("yes", "no", "largest")}}


def presence_line(p: dict) -> str:
    per_truth = ", ".join(f"{t} {v['right']:.0%}" for t, v in p["per_truth"].items())
    return (f"one attribute alone or the largest object (\"Is there a star?\", \"Is anything red?\"), no prompt: "
            f"{p['right']:.1%} (n={p['n']}); seen wordings {p['per_phrasing']['seen']['right']:.1%}, held-out "
            f"{p['per_phrasing']['heldout']['right']:.1%}; per truth: {per_truth}")
