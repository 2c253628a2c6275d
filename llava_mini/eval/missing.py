"""Questions about objects that are not there: does the model say so, or make up an answer?

    questions = missing_object_questions(scenes, vocabulary)   # per scene: one absent object, one present one
    denies("There is no red circle in the image.", "red circle")   # -> True
    summary = missing_summary(questions, answers)

"Where is the red circle?" about an image without one has one right answer: there is none. A model that only met
such questions about objects that were there names a place anyway. Each held-out scene gets two questions in the
same words: one about an object it does not have (half the time one that shares a colour or a shape with an object
it has, the hard case: knowing the colours and the shapes present is not enough) and, as the control, one about an
object it has, where "there is none" is the wrong answer. An answer denies an object when the rule judge's parser
(synth/claims.py) reads a count of zero for it.
"""
from __future__ import annotations

import random

from llava_mini.synth.claims import extract_claims
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
