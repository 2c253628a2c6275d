"""What a sentence claims about a shapes-world scene, and whether the scene bears it out.

    claims = extract_claims("There are two red circles and a blue square at the bottom left.")
    # {Claim("count", "red", "circle", number=2), Claim("object", "red", "circle"), ...}
    check_claim(claim, scene)        # scene: {"objects": [{"color", "shape", "bbox"}], "background"}

Three readers share this parser, so they read a sentence the same way: the rule judge (eval/judges.py) scores an
answer by its true and false claims, the description score (eval/describe.py) counts the objects a description
names, and the fact check (synth/fact_check.py) rejects a teacher's sample that says something false.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from llava_mini.synth.phrasings import COLOR_WORDS, NUMBER_VALUES

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
            number_word = next((words[j] for j in before if words[j] in NUMBER_VALUES or words[j].isdigit()
                                or words[j] == "no"), None)
            number = (None if number_word is None else 0 if number_word == "no"
                      else NUMBER_VALUES[number_word] if number_word in NUMBER_VALUES else int(number_word))
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
