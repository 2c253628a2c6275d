"""Instruction data from the symbolic form of an image: LLaVA's text-only teacher.

The teacher sees what the paper's GPT-4 saw: a few captions and boxes written `name: [x1, y1, x2, y2]` (normalised).
It never sees pixels. It writes the three kinds of LLaVA-Instruct data (conversation, detailed description, complex
reasoning) and short-answer questions with their answers; instruct_data.py puts them together into the stage-1
and stage-2 files. Two teachers share one interface, `conversation(context, rng)`, `detail(...)`, `complex(...)`, each
returning LLaVA turns or None (rejected):

- RuleTeacher: templates and arithmetic over the boxes; exact, free, reproducible. Object names are split into an
  optional colour word and a noun ("red circle" -> red, circle; "dog" -> dog), so it also works on COCO categories.
- LLMTeacher (llm_teacher.py): the same interface, written by any OpenAI-compatible endpoint from the same context.

The COCO route (the same teachers on COCO captions + boxes) is coco.py.
"""
from __future__ import annotations

import functools
import random
import re
from collections import Counter

from llava_mini.synth.phrasings import DETAIL_INSTRUCTIONS, article, ask, canonical, plural, split_name

BRIEF_INSTRUCTIONS = [
    "Describe the image concisely.", "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.", "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.", "Share a concise interpretation of the image provided.",
    "Write a terse but informative summary of the picture.", "Render a clear and concise summary of the photo.",
]
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
AMBIGUITY_MARGIN = 0.04  # a box centre this close to a 1/3 or 2/3 line has no clear position name


# ---------------------------------------------------------------------------- the symbolic form

def boxes_of(named_boxes) -> list[str]:
    """[(name, [x1, y1, x2, y2]), ...] -> ["name: [0.10, 0.20, 0.35, 0.45]", ...] (the paper's format)."""
    return [f"{name}: [{', '.join(f'{v:.2f}' for v in box)}]" for name, box in named_boxes]


def symbolic_context(scene: dict) -> dict:
    """What the teacher may see: captions and boxes `name: [x1, y1, x2, y2]`, never pixels or hidden fields."""
    return {"captions": list(scene["captions"]),
            "boxes": boxes_of([(f"{o['color']} {o['shape']}", o["bbox"]) for o in scene["objects"]])}


BOX_RE = re.compile(r"^\s*(.+?)\s*:\s*\[\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\]\s*$")


def parse_objects(boxes: list[str]) -> list[dict]:
    """Box strings -> objects {name, color (or None), noun, box, cx, cy, area}."""
    objects = []
    for line in boxes:
        m = BOX_RE.match(line)
        if not m:
            raise ValueError(f"box line {line!r} is not 'name: [x1, y1, x2, y2]'")
        name, box = m.group(1), [float(m.group(i)) for i in range(2, 6)]
        color, noun = split_name(name)
        objects.append({"name": name, "color": color, "noun": noun, "box": box, "cx": (box[0] + box[2]) / 2,
                        "cy": (box[1] + box[3]) / 2, "area": (box[2] - box[0]) * (box[3] - box[1])})
    return objects


def count_phrase(n: int, noun: str) -> str:
    return f"{NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} {noun if n == 1 else plural(noun)}"


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# What position_name can answer: the 3x3 grid, row by row.
POSITION_NAMES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


def position_name(cx: float, cy: float, margin: float = AMBIGUITY_MARGIN) -> str | None:
    """3x3 grid name ('top left', 'left', 'center', ...) or None when the point is closer than `margin` to a grid
    line (margin=0: always a name)."""
    if min(abs(v - t) for v in (cx, cy) for t in (1 / 3, 2 / 3)) < margin:
        return None
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    return f"{row} {col}".strip() or "center"


def clearly_largest(objs: list[dict]) -> dict | None:
    """The object whose box is over 1.2 times any other's, or None (one object, or two of about the same size):
    boxes rounded to two places cannot rank closer sizes."""
    by_area = sorted(objs, key=lambda o: -o["area"])
    return by_area[0] if len(objs) > 1 and by_area[0]["area"] > 1.2 * by_area[1]["area"] else None


def where_phrase(pos: str) -> str:
    return "in the center of the image" if pos == "center" else f"at the {pos} of the image"


# ---------------------------------------------------------------------------- short-answer VQA

class AnswerBalancer:
    """Picks, for each question type, a question whose answer has been used least so far, so that no answer
    dominates a type and a blind model cannot do better than chance by guessing the common one."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.counts: dict[str, Counter] = {}
        self.asked: list[dict] = []

    def pick(self, qtype: str, candidates: list[tuple[str, str]]) -> dict | None:
        if not candidates:
            return None
        counts = self.counts.setdefault(qtype, Counter())
        by_answer: dict[str, list[str]] = {}
        for question, answer in candidates:
            by_answer.setdefault(answer, []).append(question)
        least = min(counts[a] for a in by_answer)
        answer = self.rng.choice(sorted(a for a in by_answer if counts[a] == least))
        counts[answer] += 1
        picked = {"question": self.rng.choice(by_answer[answer]), "answer": answer, "question_type": qtype}
        self.asked.append(picked)
        return picked


def answer_sentence(qtype: str, fields: dict, answer: str) -> str:
    """The sentence a chat answers a short-answer question with, as the conversations word it: count_color
    ({"color": "red"}, "2") -> "There are two red objects in the image."; exists ({"a_name": "a red star"}, "no")
    -> "No, there is no red star in the image."; position ({"name": "red star"}, "top left") -> "The red star is at
    the top left of the image." `fields` are the question's (phrasings.QUESTIONS); count_shape also needs "noun"."""
    if qtype in ("count", "count_color", "count_shape"):
        noun = {"count": "object", "count_color": f"{fields.get('color')} object",
                "count_shape": fields.get("noun")}[qtype]
        k = int(answer)
        return f"There {'is' if k == 1 else 'are'} {count_phrase(k, noun)} in the image."
    if qtype == "color":
        return f"The {fields['noun']} is {answer}."
    if qtype == "shape":
        return f"It is {article(fields['color'] + ' ' + answer)}."
    if qtype == "position":
        return f"The {fields['name']} is {where_phrase(answer)}."
    if qtype == "exists":
        return f"Yes, there is {fields['a_name']} in the image." if answer == "yes" else \
            f"No, there is no {fields['a_name'].split(' ', 1)[1]} in the image."
    raise ValueError(f"no answer sentence for question type {qtype!r}")


def negative_names(objs: list[dict], vocabulary: list[str], rng: random.Random) -> list[str]:
    """Names of the vocabulary that are not in the scene, to ask about. Half the time only the "hard" ones, which
    share a colour or a noun with an object present (a red square and a blue circle: "a red circle?"), so that
    knowing which colours and which shapes are present is not enough: the model must bind them."""
    names = {o["name"] for o in objs}
    colors, nouns = {o["color"] for o in objs if o["color"]}, {o["noun"] for o in objs}
    absent = [n for n in vocabulary if n not in names]
    hard = [n for n in absent if split_name(n)[0] in colors or split_name(n)[1] in nouns]
    return hard if hard and rng.random() < 0.5 else absent


def short_answer_questions(boxes: list[str], vocabulary: list[str], balancer: AnswerBalancer,
                           exclude: frozenset = frozenset(), heldout: bool = False) -> list[dict]:
    """At most one question per type for this image, each unambiguous and answerable from the boxes alone.

    Types: count, count_color, count_shape, color, shape, exists, position. Answers are lower case, numbers as digits;
    "sentence" is the same answer as chat gives it (answer_sentence).
    `vocabulary` (all object names the source can produce) supplies absent colours, nouns and names for negatives.
    Each question is worded with a seen phrasing, or with `heldout` a held-out one (phrasings.py); its "key" is the
    canonical wording, and questions whose key is in `exclude` (already asked about this image) are not asked again.
    A colour, shape or position question also says how many different answers of its type the scene offers
    ("choices": 1 when every object has the same colour), so evaluation can tell a look-up from a guess."""
    objs = parse_objects(boxes)
    rng = balancer.rng
    names, nouns, colors = Counter(o["name"] for o in objs), Counter(o["noun"] for o in objs), \
        Counter(o["color"] for o in objs if o["color"])
    vocab_colors = sorted({c for c, _ in map(split_name, vocabulary) if c})
    vocab_nouns = sorted({n for _, n in map(split_name, vocabulary)})
    # per type: (fields of the question, answer)
    candidates = {
        "count": [({}, str(len(objs)))],
        "count_color": [({"color": c}, str(colors[c])) for c in vocab_colors],
        "count_shape": [({"nouns": plural(n), "noun": n}, str(nouns[n])) for n in vocab_nouns],
        "color": [({"noun": o["noun"]}, o["color"]) for o in objs if o["color"] and nouns[o["noun"]] == 1],
        "shape": [({"color": o["color"]}, o["noun"]) for o in objs if o["color"] and colors[o["color"]] == 1],
        "position": [({"name": o["name"]}, position_name(o["cx"], o["cy"])) for o in objs
                     if names[o["name"]] == 1 and position_name(o["cx"], o["cy"])],
    }
    candidates["exists"] = [({"a_name": article(n)}, "yes") for n in sorted(names)] + \
                           [({"a_name": article(n)}, "no") for n in negative_names(objs, vocabulary, rng)]
    # The look-up types: how many different answers of the type the scene's objects offer. A model that sees which
    # colours (shapes, places) are present but cannot tell which object has which picks among these.
    choices = {"color": len(colors), "shape": len(nouns),
               "position": len({position_name(o["cx"], o["cy"], margin=0) for o in objs})}
    picked = []
    for qtype, options in candidates.items():
        by_key = {canonical(qtype, **fields): (fields, answer) for fields, answer in options}
        p = balancer.pick(qtype, [(key, answer) for key, (_, answer) in by_key.items() if key not in exclude])
        if p is not None:
            fields = by_key[p["question"]][0]
            p["key"], p["question"] = p["question"], ask(qtype, rng, heldout, **fields)
            p["sentence"] = answer_sentence(qtype, fields, p["answer"])
            if qtype in choices:
                p["choices"] = choices[qtype]
            picked.append(p)
    return picked


# ---------------------------------------------------------------------------- the rule teacher

def llava_turns(pairs: list[tuple[str, str]]) -> list[dict]:
    """(question, answer) pairs -> LLaVA's turns, with `<image>` in front of the first question."""
    turns = []
    for i, (q, a) in enumerate(pairs):
        turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    return turns


class RuleTeacher:
    """Writes instruction data from captions + boxes with templates; every statement is computed from the boxes."""

    def __init__(self, vocabulary: list[str], heldout: bool = False):
        self.vocabulary = list(vocabulary)  # names the negatives ("Is there a ...?" -> no) are drawn from
        self.heldout = heldout              # word the questions with held-out phrasings (evaluation only)
        self.rejected = Counter()           # same interface as LLMTeacher; templates never fail

    def conversation(self, context: dict, rng: random.Random) -> list[dict]:
        objs = parse_objects(context["boxes"])
        names, nouns = Counter(o["name"] for o in objs), Counter(o["noun"] for o in objs)
        colors = Counter(o["color"] for o in objs if o["color"])
        unique = [o for o in objs if names[o["name"]] == 1]
        listing = join([article(o["name"]) for o in objs])
        ask_ = functools.partial(ask, rng=rng, heldout=self.heldout)      # ask_(kind, **fields)

        def asked(qtype, fields, answer):                                   # a short-answer kind, in a sentence
            return ask_(qtype, **fields), answer_sentence(qtype, fields, answer)
        qa = [(ask_("list"), rng.choice((f"I can see {count_phrase(len(objs), 'object')}: {listing}.",
                                         f"The image shows {count_phrase(len(objs), 'object')}: {listing}."))),
              asked("count", {}, str(len(objs)))]
        for o in unique:
            pos = position_name(o["cx"], o["cy"])
            if pos:
                qa.append(asked("position", {"name": o["name"]}, pos))
            if o["color"] and nouns[o["noun"]] == 1:
                qa.append(asked("color", {"noun": o["noun"]}, o["color"]))
            if o["color"] and colors[o["color"]] == 1:
                qa.append(asked("shape", {"color": o["color"]}, o["noun"]))
        for a in unique:
            for b in unique:
                if a is b:
                    continue
                if abs(a["cx"] - b["cx"]) > 0.1:
                    side = "left" if a["cx"] < b["cx"] else "right"
                    yes = side == "left"
                    qa.append((ask_("left_of", name=a["name"], other=b["name"]),
                               f"{'Yes' if yes else 'No'}, the {a['name']} is to the {side} of the {b['name']}."))
                if abs(a["cy"] - b["cy"]) > 0.1:
                    above = a["cy"] < b["cy"]
                    qa.append((ask_("above", name=a["name"], other=b["name"]),
                               f"{'Yes' if above else 'No'}, the {a['name']} is {'above' if above else 'below'} "
                               f"the {b['name']}."))
        absent = [n for n in self.vocabulary if n not in names]
        if absent:
            n = rng.choice(absent)
            qa.append(asked("exists", {"a_name": article(n)}, "no"))
        o = rng.choice(objs)
        qa.append(asked("exists", {"a_name": article(o["name"])}, "yes"))
        # Half the time a shape (colour) of the scene, as a student counts what they see; else any, so "no" is said too
        noun = rng.choice(sorted(set(nouns) if rng.random() < 0.5 else
                                 set(n for _, n in map(split_name, self.vocabulary)) | set(nouns)))
        qa.append(asked("count_shape", {"nouns": plural(noun), "noun": noun}, str(nouns[noun])))
        palette = sorted({c for c, _ in map(split_name, self.vocabulary) if c} | set(colors))
        if palette:                                 # a source whose names carry no colour (COCO) has none to ask
            color = rng.choice(sorted(colors) if colors and rng.random() < 0.5 else palette)
            qa.append(asked("count_color", {"color": color}, str(colors[color])))
        rng.shuffle(qa)
        return llava_turns(qa[:rng.randint(3, 5)])

    def detail(self, context: dict, rng: random.Random) -> list[dict]:
        objs = parse_objects(context["boxes"])
        sentences = [context["captions"][0] if context["captions"] else "",
                     f"Looking closer, the image contains {count_phrase(len(objs), 'object')}."]
        for o in objs:
            pos = position_name(o["cx"], o["cy"])
            place = where_phrase(pos) if pos else f"near ({o['cx']:.2f}, {o['cy']:.2f}) in image coordinates"
            sentences.append(f"There is {article(o['name'])} {place}.")
        big = clearly_largest(objs)
        if big:
            sentences.append(f"The largest object is the {big['name']}, covering about "
                             f"{100 * big['area']:.0f}% of the image.")
        answer = " ".join(s for s in sentences if s)
        return llava_turns([(DETAIL_INSTRUCTIONS.pick(rng, self.heldout), answer)])

    def complex(self, context: dict, rng: random.Random) -> list[dict]:
        """A question whose answer needs a few steps; the answer shows the steps."""
        objs = parse_objects(context["boxes"])
        names = Counter(o["name"] for o in objs)
        options = [self._remove_group, self._closest_to_corner, self._compare_sizes, self._add_one]
        rng.shuffle(options)
        for make in options:
            qa = make(objs, names, rng, self.heldout)
            if qa:
                return llava_turns([qa])
        raise AssertionError("_add_one always applies")

    @staticmethod
    def _remove_group(objs, names, rng, heldout):
        if len(objs) < 2:
            return None
        key = "color" if all(o["color"] for o in objs) else "noun"
        group = rng.choice(sorted({o[key] for o in objs}))
        label = f"{group} objects" if key == "color" else plural(group)
        gone = [o for o in objs if o[key] == group]
        rest = len(objs) - len(gone)
        return (ask("remove_group", rng, heldout, group=label),
                f"Let's count step by step. There are {count_phrase(len(objs), 'object')} in total: "
                f"{join([article(o['name']) for o in objs])}. Of these, {len(gone)} "
                f"{'is' if len(gone) == 1 else 'are'} {group}: {join([article(o['name']) for o in gone])}. "
                f"Removing them leaves {len(objs)} - {len(gone)} = {rest}, so "
                f"{count_phrase(rest, 'object')} would be left.")

    @staticmethod
    def _closest_to_corner(objs, names, rng, heldout):
        unique = [o for o in objs if names[o["name"]] == 1]
        if len(unique) < 2 or len(unique) != len(objs):
            return None
        corner, (x, y) = rng.choice([("top left", (0, 0)), ("top right", (1, 0)), ("bottom left", (0, 1)),
                                     ("bottom right", (1, 1))])
        dist = sorted(((((o["cx"] - x) ** 2 + (o["cy"] - y) ** 2) ** 0.5, o["name"], o) for o in objs))
        if dist[1][0] - dist[0][0] < 0.05:  # too close to call from rounded boxes
            return None
        steps = "; ".join(f"the {o['name']}'s midpoint is ({o['cx']:.2f}, {o['cy']:.2f}), {d:.2f} away"
                          for d, _, o in dist)
        return (ask("closest_to_corner", rng, heldout, corner=corner),
                f"The {corner} corner is at ({x}, {y}) in image coordinates. Measuring from the midpoint of each "
                f"object's box: {steps}. The smallest distance is {dist[0][0]:.2f}, so the {dist[0][1]} is closest to "
                f"the {corner} corner.")

    @staticmethod
    def _compare_sizes(objs, names, rng, heldout):
        unique = [o for o in objs if names[o["name"]] == 1]
        pairs = [(a, b) for a in unique for b in unique if a is not b and a["area"] > 1.3 * b["area"]]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        if rng.random() < 0.5:
            first, second = a, b
        else:
            first, second = b, a
        return (ask("compare_sizes", rng, heldout, name=first["name"], other=second["name"]),
                f"Compare the areas of their boxes. The {a['name']} covers about {100 * a['area']:.0f}% of the "
                f"image and the {b['name']} about {100 * b['area']:.0f}%. Since {100 * a['area']:.0f}% is more "
                f"than {100 * b['area']:.0f}%, the {a['name']} is bigger.")

    @staticmethod
    def _add_one(objs, names, rng, heldout):
        o = rng.choice(objs)
        n, k = len(objs), names[o["name"]]
        return (ask("add_one", rng, heldout, name=o["name"], nouns=plural(o["name"])),
                f"At the moment there {'is' if k == 1 else 'are'} {count_phrase(k, o['name'])} among "
                f"{count_phrase(n, 'object')}. Adding one more makes {k} + 1 = {k + 1} "
                f"{plural(o['name']) if k + 1 != 1 else o['name']}, and {n} + 1 = {n + 1} objects in total.")
