"""LLaVA-Bench-style judged score: the model's answer and a reference answer are both scored 1-10 by a judge that
sees only the symbolic context (captions and boxes); the relative score is mean(model) / mean(reference) x 100,
per category (conv, detail, complex) and overall. `python -m llava_mini.eval.evaluate --bench` runs it.

Two judges with one method, `score(item, answer) -> (reference score, model score)`:
- RuleJudge, deterministic, for the shapes world: it parses the facts an answer states (colours, shapes, counts,
  positions; synth/claims.py) and checks them against the scene.
- LLMJudge: any OpenAI-compatible endpoint (llm_client.ChatClient) with a review prompt in the style of the paper.
"""
from __future__ import annotations

import re
from collections import defaultdict

from tqdm import tqdm

from llava_mini.eval.scoring import normalize_answer
from llava_mini.synth.claims import check_claim, extract_claims
from llava_mini.synth.llm_teacher import format_context

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
    """Asks an OpenAI-compatible model (llm_client.ChatClient). Assistant 1 is the reference, 2 the model.
    The scores are on the reply's first line, so `max_tokens` may cut the explanation short (None: the server's
    limit)."""

    def __init__(self, client, max_tokens: int | None = None):
        self.client, self.max_tokens = client, max_tokens

    def score(self, item: dict, answer: str) -> tuple[float, float]:
        if "context" not in item:
            raise ValueError(f"bench item {item.get('id')!r} has no 'context'; the judge needs it")
        return parse_judge_scores(self.client.chat(judge_messages(item, item["reference"], answer), temperature=0,
                                                  max_tokens=self.max_tokens))


def score_bench(items: list[dict], answers: list[str], judge) -> dict:
    """Judge every answer; an unparseable judge reply is counted and left out, never scored as 0. A bad item
    (no scene, no context) is an error, not a judge failure."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} bench items but {len(answers)} answers")
    records, failures = [], []
    for item, answer in tqdm(list(zip(items, answers)), desc="judge", unit="answer", disable=len(items) < 2):
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
