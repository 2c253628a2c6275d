"""Fact-checking what a teacher wrote against the scene it was told about, with the rule judge's claims.

    fact_check(turns, context)     # None if every checkable claim of the answers is true, else why not

The teacher sees only the symbolic context (captions, and boxes `name: [x1, y1, x2, y2]`), so that is what its
answers are checked against: the boxes give each object's colour, shape and place, the captions the background.
The claims are the rule judge's (synth/claims.py): objects that exist, counts, colours, places. LLaVA kept
GPT-4's samples as they came; a 135M teacher needs the check.
"""
from __future__ import annotations

import re

from llava_mini.synth.claims import check_claim, extract_claims
from llava_mini.synth.teacher import parse_objects


def scene_of_context(context: dict) -> dict:
    """The objects (colour, shape, bbox) and background that a teacher's context states, as check_claim reads them."""
    objects = [{"color": o["color"], "shape": o["noun"], "bbox": o["box"]}
               for o in parse_objects(context.get("boxes", []))]
    background = next((m[1] for c in context.get("captions", [])
                       if (m := re.search(r"on a (?:plain )?([a-z ]+?) background", c.lower()))), "")
    return {"objects": objects, "background": background}


def describe(claim) -> str:
    thing = " ".join(w for w in (claim.color, claim.shape) if w) or "object"
    if claim.kind == "count":
        return f"{claim.number} x {thing}"
    if claim.kind == "position":
        return f"{thing} at the {claim.where}"
    return f"a {thing}" if claim.kind == "object" else f"something {claim.color}"


def fact_check(turns: list[dict], context: dict) -> str | None:
    """None if no answer ("gpt" turn) states something false of the context's scene; else "false claim (kind): ..."."""
    scene = scene_of_context(context)
    for turn in turns:
        if turn["from"] != "gpt":
            continue
        false = sorted((c for c in extract_claims(turn["value"]) if not check_claim(c, scene)), key=repr)
        if false:
            return f"false claim ({false[0].kind}): {describe(false[0])}"
    return None
