"""LLaVA-Bench-style judged score: the model's answer and a reference answer are both scored 1-10 by a judge that
sees only the symbolic context (captions and boxes); the relative score is mean(model) / mean(reference) x 100,
per category (conv, detail, complex) and overall. `python -m llava_mini.eval.evaluate --bench` runs it.

Two judges with one method, `score(item, answer) -> (reference score, model score)`:
- RuleJudge, deterministic, for the shapes world: it parses the facts an answer states (colours, shapes, counts,
  positions) and checks them against the scene.
- LLMJudge: any OpenAI-compatible endpoint (llm_client.ChatClient) with a review prompt in the style of the paper.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from llava_mini.eval.scoring import NUMBER_WORDS, normalize_answer
from llava_mini.synth.llm_teacher import format_context
from llava_mini.synth.phrasings import COLOR_WORDS

CATEGORIES = ("conv", "detail", "complex")


def relative_scores(records: list[dict]) -> dict:
    """records: [{"category", "score_reference", "score_model"}]. Returns per category and "overall":
    {"relative": mean(model) / mean(reference) x 100, "model": mean, "reference": mean, "n"}."""
    groups = defaultdict(list)
    for r in records:
        groups[r["category"]].append(r)
        groups["overall"].append(r)
    out = {}
    for name in [c for c in CATEGORIES if c in groups] + sorted(set(groups) - set(CATEGORIES) - {"overall"}) + ["overall"]:
        rs = groups.get(name, [])
        if not rs:
            continue
        model = sum(r["score_model"] for r in rs) / len(rs)
        ref = sum(r["score_reference"] for r in rs) / len(rs)
        out[name] = {"relative": 100.0 * model / ref if ref else 0.0, "model": model, "reference": ref, "n": len(rs)}
    return out


SHAPE_WORDS = {"circle", "square", "triangle", "rectangle", "star", "ellipse", "oval", "hexagon", "pentagon",
               "diamond", "cross", "heart"}
OBJECT_WORDS = {"shape", "object", "thing", "item"}        # "three shapes": a count over every object
# A clause with one of these talks about a changed or imagined scene ("adding one more makes 3 circles",
# "one object would be left"): it is arithmetic, not a statement about this image, so it is not checked.
HYPOTHETICAL_WORDS = {"would", "could", "if", "adding", "add", "removing", "remove", "makes", "leaves", "after"}
POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "upper": "top", "above": "top",
                  "bottom": "bottom", "lower": "bottom", "below": "bottom", "center": "center",
                  "centre": "center", "middle": "center"}


def _singular(word: str) -> str:
    if word.endswith("es") and word[:-2] in {"cross"}:
        return word[:-2]
    return word[:-1] if word.endswith("s") and word[:-1] in SHAPE_WORDS | OBJECT_WORDS else word


@dataclass(frozen=True)
class Claim:
    """One checkable statement parsed from an answer. kind: "object" (an object of this colour/shape exists),
    "color" (something has this colour), "count" (exactly `number` such objects), "position" (such an object
    lies in region `where`)."""
    kind: str
    color: str | None = None
    shape: str | None = None
    number: int | None = None
    where: str | None = None


def extract_claims(text: str) -> set[Claim]:
    """Parse the facts a rule judge can check: "two red circles", "a blue square on the left", "no stars",
    "the background is white". Deliberately simple: a word window, clause by clause."""
    claims = set()
    for clause in re.split(r"[.;,!?\n]|\band\b|\bbut\b", text.lower()):
        words = [_singular(w) for w in re.findall(r"[a-z0-9]+", clause)]
        if "=" in clause or HYPOTHETICAL_WORDS & set(words):
            continue
        objects_here, colors_used = [], set()
        for i, w in enumerate(words):
            if w not in SHAPE_WORDS | OBJECT_WORDS:
                continue
            shape = w if w in SHAPE_WORDS else None
            before = range(i - 1, max(0, i - 3) - 1, -1)            # up to 3 words back: "three small red circles"
            color_at = next((j for j in before if words[j] in COLOR_WORDS), None)
            color = words[color_at] if color_at is not None else None
            colors_used.add(color_at)
            number_word = next((words[j] for j in before if words[j] in NUMBER_WORDS or words[j].isdigit()
                                or words[j] == "no"), None)
            number = None if number_word is None else 0 if number_word == "no" else int(NUMBER_WORDS.get(number_word, number_word))
            if number is not None:
                claims.add(Claim("count", color, shape, number=number))
            if number != 0 and (shape or color):
                claims.add(Claim("object", color, shape))
                objects_here.append((color, shape))
        # A colour not attached to a shape: "it is red", "the background is white".
        claims |= {Claim("color", w) for i, w in enumerate(words) if w in COLOR_WORDS and i not in colors_used}
        wheres = {POSITION_WORDS[w] for w in words if w in POSITION_WORDS}
        if len(objects_here) == 1 and objects_here[0][1] and wheres:      # one object, its place: "top left"
            color, shape = objects_here[0]
            claims.add(Claim("position", color, shape, where=" ".join(sorted(wheres))))
    return claims


def _in_region(bbox, where: str) -> bool:
    """bbox normalised (x1, y1, x2, y2); where: region words joined by spaces, all must hold ("left top")."""
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    region = {"left": cx < 0.5, "right": cx > 0.5, "top": cy < 0.5, "bottom": cy > 0.5,
              "center": abs(cx - 0.5) < 0.25 and abs(cy - 0.5) < 0.25}
    return all(region[w] for w in where.split())


def check_claim(claim: Claim, scene: dict) -> bool:
    """Is the claim true of the scene? (scene: world.py's dict with "objects" and "background")."""
    def norm_color(c):
        return "gray" if c == "grey" else c
    matches = [o for o in scene.get("objects", [])
               if (claim.shape is None or o["shape"] == claim.shape)
               and (claim.color is None or norm_color(o["color"]) == norm_color(claim.color))]
    if claim.kind == "object":
        return bool(matches)
    if claim.kind == "count":
        return len(matches) == claim.number
    if claim.kind == "color":
        background = [norm_color(w) for w in str(scene.get("background", "")).split()]    # "pale blue"
        return bool(matches) or norm_color(claim.color) in background
    if claim.kind == "position":
        return any(_in_region(o["bbox"], claim.where) for o in matches)
    raise ValueError(f"unknown claim kind {claim.kind!r}")


def _token_f1(a: str, b: str) -> float:
    wa, wb = normalize_answer(a).split(), normalize_answer(b).split()
    common = sum(min(wa.count(w), wb.count(w)) for w in set(wa))
    if not wa or not wb or not common:
        return 0.0
    p, r = common / len(wa), common / len(wb)
    return 2 * p * r / (p + r)


class RuleJudge:
    """A deterministic judge for the shapes world: it checks what an answer says against the scene.

    score = 1 + 9 x precision x (0.5 + 0.5 x recall), where precision is the share of the answer's claims that
    are true of the scene (hallucinations cost) and recall the share of the reference's true claims the answer
    also makes (saying little costs, but less). An answer with no checkable claims gets at most 5, by word
    overlap with the reference; when the reference has none either (a "why" question), word overlap decides
    on the full 1-10 scale."""

    def score_answer(self, answer: str, reference: str, scene: dict) -> float:
        claims, ref_claims = extract_claims(answer), extract_claims(reference)
        ref_true = {c for c in ref_claims if check_claim(c, scene)}
        if not claims:
            return 1.0 + (9.0 if not ref_claims else 4.0) * _token_f1(answer, reference)
        precision = sum(check_claim(c, scene) for c in claims) / len(claims)
        recall = len(claims & ref_true) / len(ref_true) if ref_true else 1.0
        return 1.0 + 9.0 * precision * (0.5 + 0.5 * recall)

    def score(self, item: dict, answer: str) -> tuple[float, float]:
        """(reference score, model score), the same order as the LLM judge's 'score1 score2'."""
        if "scene" not in item:
            raise ValueError(f"bench item {item.get('id')!r} has no 'scene'; the rule judge needs it")
        return (self.score_answer(item["reference"], item["reference"], item["scene"]),
                self.score_answer(answer, item["reference"], item["scene"]))


JUDGE_SYSTEM = "You are a careful and fair reviewer of answers written by AI assistants."
JUDGE_INSTRUCTIONS = (
    "Two AI assistants answered the user's question about an image. You cannot see the image; the text under "
    "[Context] describes it (captions, and objects with bounding boxes as normalised x1, y1, x2, y2). "
    "Rate each answer for helpfulness, relevance, accuracy with respect to the context, and level of detail, "
    "with an overall score from 1 to 10 (higher is better).\n"
    "On the first line write only the two scores, Assistant 1 then Assistant 2, separated by a space. "
    "From the second line on, explain your rating; the order in which the answers appear must not affect it.")


def judge_messages(item: dict, answer_1: str, answer_2: str) -> list[dict]:
    content = (f"[Context]\n{format_context(item['context'])}\n\n[Question]\n{item['question']}\n\n"
               f"[Assistant 1]\n{answer_1}\n[End of Assistant 1]\n\n[Assistant 2]\n{answer_2}\n"
               f"[End of Assistant 2]\n\n[Instructions]\n{JUDGE_INSTRUCTIONS}\n")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}]


class JudgeReplyError(ValueError):
    """The judge's reply holds no usable scores (score_bench counts it and leaves the item out)."""


def parse_judge_scores(text: str) -> tuple[float, float]:
    """The first line must hold two numbers ("8 6", "8, 6", "8.5 6"); anything else is an error quoting it."""
    first = text.strip().split("\n")[0]
    numbers = re.findall(r"\d+(?:\.\d+)?", first)
    if len(numbers) != 2:
        raise JudgeReplyError(f"judge reply does not start with two scores: {first[:200]!r}")
    return float(numbers[0]), float(numbers[1])


class LLMJudge:
    """Asks an OpenAI-compatible model (llm_client.ChatClient). Assistant 1 is the reference, 2 the model."""

    def __init__(self, client):
        self.client = client

    def score(self, item: dict, answer: str) -> tuple[float, float]:
        if "context" not in item:
            raise ValueError(f"bench item {item.get('id')!r} has no 'context'; the judge needs it")
        return parse_judge_scores(self.client.chat(judge_messages(item, item["reference"], answer), temperature=0))


def score_bench(items: list[dict], answers: list[str], judge) -> dict:
    """Judge every answer; an unparseable judge reply is counted and left out, never scored as 0. A bad item
    (no scene, no context) is an error, not a judge failure."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} bench items but {len(answers)} answers")
    records, failures = [], []
    for item, answer in zip(items, answers):
        try:
            ref_score, model_score = judge.score(item, answer)
        except JudgeReplyError as e:
            failures.append({"id": item.get("id"), "error": str(e)})
            continue
        records.append({"id": item.get("id"), "image": item.get("image"), "category": item["category"],
                        "phrasing": item.get("phrasing"), "question": item["question"], "answer": answer,
                        "score_reference": ref_score, "score_model": model_score})
    phrasings = sorted({r["phrasing"] for r in records if r["phrasing"]})
    return {"scores": relative_scores(records), "records": records, "judge_failures": failures,
            "per_phrasing": {p: relative_scores([r for r in records if r["phrasing"] == p])["overall"]["relative"]
                             for p in phrasings}}
