"""The scoring layer of evaluation: plain functions over strings, easy to check by hand. Both the evaluation
(eval/evaluate.py) and the judges (eval/judges.py) use them.

    normalize_answer("The Two.")              # -> "2"
    vqa_accuracy(questions, predictions)      # {"overall", "n", "per_type", "count_per_type", "off_type", "lookup", ...}
    answer_in_sentence("color", "The star is blue.")   # -> "blue": a chat reply's short answer
    parse_letter("The answer is B.", "ABC")   # -> "B"
"""
from __future__ import annotations

import re
import string
from collections import Counter, defaultdict

from llava_mini.jsonio import read_json
from llava_mini.synth.phrasings import COLOR_WORDS, NUMBER_VALUES, alternatives
from llava_mini.synth.teacher import POSITION_NAMES
from llava_mini.synth.world import SHAPES

# ---------------------------------------------------------------------------------------------------------------
# 1. VQA scoring

NUMBER_WORDS = {w: str(i) for w, i in NUMBER_VALUES.items()}      # "two" -> "2"
SHAPE_NOUNS = set(SHAPES)
_PLACE = re.compile(rf"\b(?:{alternatives(POSITION_NAMES)})\b")     # "top left" before "top"
ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """'The Two.' -> '2', 'a Red circle!' -> 'red circle'. Apostrophes vanish ("don't" -> 'dont'), other
    punctuation separates words."""
    text = text.lower().replace("'", "")
    words = _PUNCTUATION.sub(" ", text).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def vqa_accuracy(questions: list[dict], predictions: list[str]) -> dict:
    """Normalised exact match. questions: [{"answer", "question_type", ...}]; predictions: one string each.
    Returns {"overall", "n", "per_type": {type: accuracy}, "count_per_type": {type: n}, "off_type", "off_type_per_type"}
    and where the questions say how they are worded ("phrasing": "seen" or "heldout", world.generate_dataset),
    "per_phrasing" and "off_type_per_phrasing" too, and where they say how many answers their scene offers
    ("choices"), "lookup" (lookup_accuracy).

    "Off type": the share of replies that are no answer of their question's type at all, i.e. not among the right
    answers of any question of that type in the set ("triangle" to "Where is the star?"). A wrong answer of the right
    type is a mistake about the image; an off-type one means the question itself was not understood."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    answers_of_type = defaultdict(set)   # type -> every right answer its questions have: the replies that fit it
    for q in questions:
        answers_of_type[q.get("question_type", "all")].add(normalize_answer(str(q["answer"])))
    hits, off, counts = defaultdict(int), defaultdict(int), defaultdict(int)
    phrasing_hits, phrasing_off, phrasing_counts = defaultdict(int), defaultdict(int), defaultdict(int)
    for q, pred in zip(questions, predictions):
        qtype, reply = q.get("question_type", "all"), normalize_answer(pred)
        right, off_type = reply == normalize_answer(str(q["answer"])), reply not in answers_of_type[qtype]
        counts[qtype] += 1
        hits[qtype] += right
        off[qtype] += off_type
        if "phrasing" in q:
            phrasing_counts[q["phrasing"]] += 1
            phrasing_hits[q["phrasing"]] += right
            phrasing_off[q["phrasing"]] += off_type
    n = sum(counts.values())
    result = {"overall": sum(hits.values()) / n if n else 0.0, "n": n,
              "per_type": {t: hits[t] / counts[t] for t in sorted(counts)},
              "count_per_type": {t: counts[t] for t in sorted(counts)},
              "off_type": sum(off.values()) / n if n else 0.0,
              "off_type_per_type": {t: off[t] / counts[t] for t in sorted(counts)}}
    if phrasing_counts:
        result["per_phrasing"] = {k: phrasing_hits[k] / phrasing_counts[k] for k in sorted(phrasing_counts)}
        result["off_type_per_phrasing"] = {k: phrasing_off[k] / phrasing_counts[k] for k in sorted(phrasing_counts)}
    lookup = lookup_accuracy(questions, predictions)
    if lookup:
        result["lookup"] = lookup
    return result


def answer_in_sentence(question_type: str, reply: str) -> str:
    """The short answer that a chat reply (no short-answer prompt) states for a question of `question_type`:
    "There are two red objects in the image." -> "2", "The star is blue." -> "blue", "It is an orange triangle." ->
    "triangle", "The red star is at the top left of the image." -> "top left", "No, there is no red star." -> "no".
    A reply that states no answer of the type, or two different ones ("blue" and "red" to "What colour is the
    star?"), comes back normalised as it is, so vqa_accuracy counts it wrong (and off type when it is no answer of
    the type at all)."""
    text = normalize_answer(reply)
    words = text.split()
    if question_type in ("count", "count_color", "count_shape"):
        found = [w for w in words if w.isdigit() or w == "no"][:1]     # number words are digits by now; "no" is 0
        found = ["0" if w == "no" else w for w in found]
    elif question_type == "exists":
        found = words[:1] if words[:1] in (["yes"], ["no"]) else []
    elif question_type == "color":
        found = sorted({"gray" if w == "grey" else w for w in words if w in COLOR_WORDS})
    elif question_type == "shape":
        found = sorted({w[:-1] if w[:-1] in SHAPE_NOUNS else w for w in words} & SHAPE_NOUNS)
    elif question_type == "position":
        found = sorted(set(_PLACE.findall(text)))
    else:
        raise ValueError(f"no sentence reader for question type {question_type!r}")
    return found[0] if len(found) == 1 else text


def lookup_accuracy(questions: list[dict], predictions: list[str]) -> dict | None:
    """Accuracy on the questions that need a look-up: those whose scene offers two or more answers of their type
    ("choices", world.generate_dataset: "What colour is the star?" beside a blue star and a red circle), against
    "chance", what a model scores that knows which colours (shapes, places) are present but not which object has
    which and picks one of them. Where every object has the same colour, the colour question is answered without
    finding the star; overall accuracy mixes those in. None when no question says how many choices it has.
    {"accuracy", "chance", "n", "per_type": {type: {"accuracy", "chance", "n"}}}"""
    picked = [(q, pred) for q, pred in zip(questions, predictions) if q.get("choices", 0) >= 2]
    if not picked:
        return None

    def score(pairs):
        right = sum(normalize_answer(pred) == normalize_answer(str(q["answer"])) for q, pred in pairs)
        return {"accuracy": right / len(pairs), "chance": sum(1 / q["choices"] for q, _ in pairs) / len(pairs),
                "n": len(pairs)}

    types = sorted({q["question_type"] for q, _ in picked})
    return {**score(picked), "per_type": {t: score([(q, p) for q, p in picked if q["question_type"] == t])
                                          for t in types}}


def lookup_line(lookup: dict) -> str:
    """scoring.lookup_accuracy in one line: the questions that need the asked object found, against picking."""
    return (f"look-ups (2+ answers in the scene, n={lookup['n']}): {lookup['accuracy']:.1%} against "
            f"{lookup['chance']:.1%} for picking one of the scene's (" +
            ", ".join(f"{t} {v['accuracy']:.1%} / {v['chance']:.1%}" for t, v in lookup["per_type"].items()) + ")")


def answer_confusion(questions: list[dict], predictions: list[str], question_type: str) -> dict[str, Counter]:
    """How a model is wrong, for one question type: for each right answer, how often each reply was given (both
    normalised). {"top left": Counter({"top": 15, "top left": 5}), ...}"""
    table: dict[str, Counter] = defaultdict(Counter)
    for q, pred in zip(questions, predictions):
        if q.get("question_type") == question_type:
            table[normalize_answer(str(q["answer"]))][normalize_answer(pred)] += 1
    return dict(sorted(table.items()))


# ---------------------------------------------------------------------------------------------------------------
# 2. ScienceQA (LLaVA's converted format)

_OPTION = re.compile(r"\(([A-Z])\)")
_ANSWER_IS = re.compile(r"The answer is ([A-Z])\.?")


def parse_letter(text: str, options: str) -> str | None:
    """The letter a reply chooses, as LLaVA reads it: a bare letter ("B"), a letter then ". " ("B. red"), or
    exactly one "The answer is B." anywhere. None if it names no option."""
    text = text.strip()
    if len(text) == 1 and text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    if len(text) == 2 and text[0] in options and text[1] in ".)":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 and found[0] in options else None


def read_scienceqa(path: str) -> list[dict]:
    """LLaVA's converted ScienceQA: [{"id", "image"?, "conversations": [{"from": "human", "value": "Context: ...
    Question: ... Options: (A) ... (B) ..."}, {"from": "gpt", "value": "B" or "... The answer is B."}]}].
    Returns [{"id", "image" or None, "prompt", "answer", "options"}]."""
    out = []
    for entry in read_json(path):
        sid = entry.get("id", "?")
        try:
            human, gpt = entry["conversations"][0]["value"], entry["conversations"][1]["value"]
        except (KeyError, IndexError):
            raise ValueError(f"{path}: sample {sid!r} needs two conversation turns") from None
        options = "".join(_OPTION.findall(human.split("Options:")[-1]))
        answer = parse_letter(gpt, options)
        if not options or answer is None:
            raise ValueError(f"{path}: sample {sid!r} has no options or no answer letter ({gpt[:80]!r})")
        prompt = human.replace("<image>", "").strip()
        out.append({"id": sid, "image": entry.get("image"), "prompt": prompt, "answer": answer, "options": options})
    return out


def scienceqa_accuracy(samples: list[dict], predictions: list[str]) -> dict:
    """Accuracy overall and on questions with an image. A reply naming no option is wrong (LLaVA guesses at
    random instead; we count it, in "unparsed", so the number is deterministic)."""
    correct = [parse_letter(p, s["options"]) == s["answer"] for s, p in zip(samples, predictions)]
    with_image = [c for c, s in zip(correct, samples) if s["image"]]
    return {"accuracy": sum(correct) / len(correct) if correct else 0.0, "n": len(correct),
            "image_accuracy": sum(with_image) / len(with_image) if with_image else 0.0, "n_image": len(with_image),
            "unparsed": sum(parse_letter(p, s["options"]) is None for s, p in zip(samples, predictions))}
