"""The description score: how well an answer to "Describe the image." names what is in the scene.

    score = description_score("A red circle at the top left and a blue square.", scene)
    score["recall"], score["precision"], score["all_named"], score["exact"]
    summary = description_summary([score, ...])      # means over images, and the shares described fully / exactly

The facts come from the rule judge's parser (synth/claims.py), so a description is read the way the
LLaVA-Bench-style score reads it. An object counts as named when the text names its colour and its shape together
("a red circle", "two red circles"); recall and precision are over the scene's distinct (colour, shape) pairs, so "two
yellow diamonds" names a scene's two yellow diamonds at once. A stated position ("the star at the bottom left") is
checked too, where the text gives one.
"""
from __future__ import annotations

from llava_mini.synth.claims import check_claim, extract_claims


def _norm(color: str | None) -> str | None:
    return "gray" if color == "grey" else color


def description_score(text: str, scene: dict) -> dict:
    """Per image: the objects named (colour + shape), how many are in the scene, recall, precision, the stated
    positions and how many of them are true; `all_named` (every object named) and `exact` (and nothing false named)."""
    truth = {(_norm(o["color"]), o["shape"]) for o in scene["objects"]}
    claims = extract_claims(text)
    named = {(_norm(c.color), c.shape) for c in claims if c.kind == "object" and c.color and c.shape}
    right = named & truth
    positions = [c for c in claims if c.kind == "position"]
    return {"named": len(named), "objects": len(truth), "right": len(right),
            "recall": len(right) / len(truth) if truth else 1.0,
            "precision": len(right) / len(named) if named else 0.0,
            "positions": len(positions), "positions_true": sum(check_claim(c, scene) for c in positions),
            "all_named": right == truth, "exact": right == truth and named == truth}


def description_summary(scores: list[dict]) -> dict:
    """Means over images of recall and precision; the shares of images with every object named, and described
    exactly; the share of stated positions that are true (None when no description states one)."""
    n = len(scores)
    if not n:
        raise ValueError("no descriptions to score")
    stated = sum(s["positions"] for s in scores)
    return {"n": n, "recall": sum(s["recall"] for s in scores) / n,
            "precision": sum(s["precision"] for s in scores) / n,
            "all_named": sum(s["all_named"] for s in scores) / n, "exact": sum(s["exact"] for s in scores) / n,
            "positions_stated": stated,
            "position_accuracy": sum(s["positions_true"] for s in scores) / stated if stated else None}
