"""How the teacher words its questions: many phrasings per question, split into seen and held-out.

A model that only learns the teacher's one template per question matches templates; it does not follow
instructions. So every question the teacher asks has several wordings (synonyms, word orders, both spellings of
colour/color, "objects/shapes/things", "Where is / In which part / Which corner"), and each wording belongs to one of
two sets:

- `seen`: used in every training file (stage 1, stage 2, the bases' text);
- `heldout`: never written into any training file; only the evaluation asks them (world.generate_dataset marks each
  held-out question `"phrasing": "heldout"`), so the report can show whether a model understood a new wording.

A phrasing is a `str.format` template over the fields its question needs:
    color, noun, nouns (plural), name ("red circle"), a_name ("a red circle"), other (a second name), corner, group,
    a_noun ("a star"), a_color ("an orange").
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

COLOR_WORDS = {"red", "green", "blue", "yellow", "black", "gray", "grey", "teal", "brown", "white", "purple", "orange",
               "pink", "cyan", "magenta", "violet"}
NUMBER_VALUES = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis"}


def split_name(name: str) -> tuple[str | None, str]:
    first, _, rest = name.partition(" ")
    return (first, rest) if first in COLOR_WORDS and rest else (None, name)


def plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def alternatives(words) -> str:
    """A regex alternation of `words`, longest first (so "top left" wins over "top")."""
    return "|".join(map(re.escape, sorted(set(words), key=len, reverse=True)))


@dataclass(frozen=True)
class Phrasings:
    seen: tuple[str, ...]
    heldout: tuple[str, ...]

    def pick(self, rng: random.Random, heldout: bool = False) -> str:
        return rng.choice(self.heldout if heldout else self.seen)


QUESTIONS: dict[str, Phrasings] = {
    # ---- short answers (teacher.short_answer_questions) and the conversation's questions
    "count": Phrasings(
        seen=("How many objects are there?", "How many shapes are in the image?", "How many things can you see?",
              "Count the objects in the picture.", "What is the number of shapes in the image?",
              "How many objects does the picture show?",
              "How many shapes can you see in this picture?", "How many objects can you count?",
              "What's the number of things in the image?", "Please count the shapes in the image.",
              "What is the total number of objects in the picture?"),
        heldout=("How many items are shown here?", "Can you count the shapes for me?")),
    "count_color": Phrasings(
        seen=("How many {color} objects are there?", "How many {color} shapes are in the image?",
              "Count the {color} things in the picture.", "What is the number of {color} objects?",
              "How many objects are {color}?",
              "How many {color} things can you see?", "How many {color} shapes can you count?",
              "What's the number of {color} things in the picture?", "Please count the {color} objects.",
              "How many {color} objects does the image show?"),
        heldout=("How many of the shapes are coloured {color}?", "Tell me how many {color} items you see.")),
    "count_shape": Phrasings(
        seen=("How many {nouns} are there?", "How many {nouns} are in the image?", "Count the {nouns}.",
              "What is the number of {nouns} in the picture?", "How many {nouns} can you see?",
              "How many {nouns} are in this picture?", "How many {nouns} can you count in the picture?",
              "What's the number of {nouns}?", "Please count the {nouns} in the image."),
        heldout=("How many {nouns} does this picture contain?", "Tell me the number of {nouns} shown.")),
    "color": Phrasings(
        seen=("What color is the {noun}?", "What colour is the {noun}?", "What is the color of the {noun}?",
              "Which colour does the {noun} have?", "Tell me the color of the {noun}.",
              "What's the {noun}'s colour?", "Can you tell me what colour the {noun} is?",
              "Tell me what color the {noun} is.", "What color is the {noun} in the image?",
              "Please name the colour of the {noun}.", "Looking at the {noun}, what colour is it?"),
        heldout=("The {noun} is which colour?", "What colour has the {noun} been painted?")),
    "shape": Phrasings(
        seen=("What shape is the {color} object?", "What is the shape of the {color} thing?",
              "Which shape is {color}?", "What kind of shape is the {color} one?", "Name the {color} shape.",
              "What shape does the {color} object have?", "Tell me the shape of the {color} thing.",
              "What's the shape of the {color} object?", "Which kind of shape is {color}?",
              "What shape is {color} in the picture?", "Looking at the {color} thing, what shape is it?"),
        heldout=("What is the {color} item shaped like?", "Tell me which shape is coloured {color}.")),
    "position": Phrasings(
        seen=("Where is the {name}?", "Where is the {name} located?", "In which part of the image is the {name}?",
              "Where in the picture can you see the {name}?", "Which part of the image is the {name} in?",
              "Where's the {name} in the image?", "Tell me where the {name} is.", "Where is the {name} placed?",
              "Please tell me where the {name} is located.", "Where in the image is the {name}?",
              "Where can you see the {name}?"),
        heldout=("Whereabouts is the {name}?", "In what region of the picture does the {name} sit?")),
    "exists": Phrasings(
        seen=("Is there {a_name}?", "Is there {a_name} in the image?", "Do you see {a_name}?",
              "Does the picture contain {a_name}?", "Can you see {a_name} in the picture?",
              "Is there {a_name} in this picture?", "Can you see {a_name}?", "Does the image show {a_name}?",
              "Tell me if there is {a_name}.", "Do you see {a_name} in this image?"),
        heldout=("Is {a_name} present?", "Would I find {a_name} in this picture?")),
    # ---- the conversation's other questions (teacher.RuleTeacher.conversation)
    "list": Phrasings(
        seen=("What objects can you see in the image?", "What is in the picture?", "What shapes does the image show?",
              "Which things are in this image?", "Tell me what you see.", "What can you see in this picture?",
              "Tell me which objects are in the image.", "What's in this image?"),
        heldout=("Name everything in the picture.", "List the shapes in this image.")),
    "left_of": Phrasings(
        seen=("Is the {name} to the left of the {other}?", "Is the {name} left of the {other}?",
              "Does the {name} sit to the left of the {other}?"),
        heldout=("Is the {name} further left than the {other}?",)),
    "above": Phrasings(
        seen=("Is the {name} above the {other}?", "Is the {name} higher than the {other}?",
              "Is the {name} placed above the {other}?"),
        heldout=("Does the {name} sit higher up than the {other}?",)),
    # ---- a question about one attribute alone, or the largest object (instruct_data.presence)
    "exists_shape": Phrasings(
        seen=("Is there {a_noun}?", "Is there {a_noun} in the image?", "Can you see {a_noun}?",
              "Do you see {a_noun} in the picture?", "Does the picture contain {a_noun}?",
              "Are there {nouns} in the image?", "Can you see {nouns} in this picture?",
              "Does the image show {nouns}?"),
        heldout=("Are there any {nouns}?", "Do I spot {a_noun} anywhere here?")),
    "exists_color": Phrasings(
        seen=("Is there {a_color} object?", "Is there {a_color} thing in the image?", "Can you see {a_color} shape?",
              "Do you see {a_color} object in the picture?", "Is there {color} in the image?",
              "Does the picture contain {color} things?", "Are there {color} objects in this picture?",
              "Can you see {color} in the image?"),
        heldout=("Is anything {color}?", "Do you notice something {color} here?")),
    "largest": Phrasings(
        seen=("Which object is the largest?", "Which shape is the largest in the image?",
              "What is the largest thing in the picture?", "Which object in this image is the largest?",
              "Tell me which shape is the largest."),
        heldout=("Which one is the biggest?", "What's the biggest item?")),
    # ---- the inventory turn every stage-2 conversation gets (instruct_data.inventory)
    "inventory": Phrasings(
        seen=("What shape and colour does each object have, and where is it?",
              "What shape and color does each object have, and where is it?",
              "Tell me the shape, colour and part of the image of each object.",
              "Which shape, colour and part of the image does each object have?"),
        heldout=("Name the shape, color and position of each thing.",)),
    # ---- complex reasoning (teacher.RuleTeacher.complex)
    "remove_group": Phrasings(
        seen=("If all the {group} were removed, how many objects would be left?",
              "Suppose we take away every one of the {group}. How many objects remain?",
              "How many shapes would be left if the {group} disappeared?"),
        heldout=("Imagine the {group} are gone: how many things are still in the picture?",)),
    "closest_to_corner": Phrasings(
        seen=("Which object is closest to the {corner} corner of the image?",
              "Which shape is nearest to the {corner} corner?",
              "What is the closest thing to the {corner} corner of the picture?"),
        heldout=("Of all the shapes, which lies nearest the {corner} corner?",)),
    "compare_sizes": Phrasings(
        seen=("Which is bigger, the {name} or the {other}?", "Is the {name} larger than the {other}?",
              "Which of the two is larger: the {name} or the {other}?"),
        heldout=("Between the {name} and the {other}, which takes up more space?",)),
    "add_one": Phrasings(
        seen=("If one more {name} were added to the image, how many {nouns} would there be, and how many objects "
              "in total?",
              "Suppose another {name} is put into the picture. How many {nouns} and how many objects would there be?"),
        heldout=("Add one {name} to the scene: how many {nouns}, and how many shapes overall?",)),
}

# "Describe the image" in many words (teacher.RuleTeacher.detail); eval.evaluate.DESCRIBE_PROMPT is held out.
DETAIL_INSTRUCTIONS = Phrasings(
    seen=("Describe the following image in detail.", "Provide a detailed description of the given image.",
          "Give an elaborate explanation of the image you see.", "Explain the various aspects of the image before you.",
          "What do you see happening in this image? Describe it thoroughly.",
          "Write a detailed account of the picture.", "Describe this picture.", "Tell me about the image.",
          "What does this image show? Please describe it.", "Can you describe what is in the picture?"),
    heldout=("Describe the image.", "Give me a description of this picture, please."))


def ask(kind: str, rng: random.Random, heldout: bool = False, **fields) -> str:
    """One wording of question `kind` from the seen (or held-out) set, filled in with `fields`."""
    return QUESTIONS[kind].pick(rng, heldout).format(**fields)


def canonical(kind: str, **fields) -> str:
    """The first seen wording: the key that says two wordings ask the same question about the same thing."""
    return QUESTIONS[kind].seen[0].format(**fields)


def question_parser(vocabulary: list[str]):
    """A function question -> (kind, "seen" | "heldout", fields) or None: which phrasing wrote the question, and
    what it asks about. Fields only match the names in `vocabulary` ("red circle", ...), so a wording that contains
    another ("Where is the {name}?" in "Where is the red circle located?") is told apart. The tests use it to check
    every statement the teacher makes and that no held-out phrasing reaches a training file."""
    colors = sorted({c for c, _ in map(split_name, vocabulary) if c})
    nouns = sorted({n for _, n in map(split_name, vocabulary)})
    name = f"(?:{alternatives(vocabulary)})"
    fields = {"color": alternatives(colors), "noun": alternatives(nouns),
              "nouns": alternatives(map(plural, nouns + vocabulary)), "name": name, "other": name,
              "a_name": f"an? {name}", "a_noun": f"an? (?:{alternatives(nouns)})",
              "a_color": f"an? (?:{alternatives(colors)})", "corner": "top left|top right|bottom left|bottom right",
              "group": f"(?:{alternatives(colors)}) objects|{alternatives(map(plural, nouns))}"}
    patterns = []
    for kind, p in [*QUESTIONS.items(), ("detail", DETAIL_INSTRUCTIONS)]:
        for split, wordings in (("seen", p.seen), ("heldout", p.heldout)):
            for w in wordings:
                regex = re.escape(w)
                for f, pattern in fields.items():
                    regex = regex.replace(re.escape("{" + f + "}"), f"(?P<{f}>{pattern})")
                patterns.append((re.compile(regex), kind, split))

    def parse(question: str):
        for regex, kind, split in patterns:
            m = regex.fullmatch(question)
            if m:
                return kind, split, m.groupdict()
        return None
    return parse
