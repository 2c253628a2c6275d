"""The stage-1 and stage-2 files from the teacher's samples: caption pairs, and per image a conversation, a detailed
description, a complex-reasoning question and a multi-turn short-answer VQA sample (teacher.py writes each of them).

    stage1 = stage1_pairs(items, seed)
    stage2 = make_instruct_data(items, RuleTeacher(vocab), seed, vocabulary=vocab, balancer=AnswerBalancer(rng))

items: [{"id", "image", "context": teacher.symbolic_context(scene)}]. The conversations get more here, not from the
teacher: a third open with the image's description and every one gets an inventory turn, since those shape a whole
chat rather than answer one question; and every one gets a question about one attribute alone or the largest object
(presence), which students ask and the teacher's conversations do not. Added here, they leave the teacher's own
conversations, and the bench written from them, as they are.
"""
from __future__ import annotations

import random

from tqdm import tqdm

from llava_mini.data.conversation import SHORT_ANSWER_PROMPT  # "\nAnswer the question using a single word or phrase."
from llava_mini.synth.phrasings import article, ask, plural, split_name
from llava_mini.synth.teacher import (BRIEF_INSTRUCTIONS, AnswerBalancer, clearly_largest, count_phrase, join,
                                      llava_turns, parse_objects, position_name, short_answer_questions)

DESCRIPTION_FIRST = 1 / 3  # the share of stage-2 conversations that open with the image's detailed description
# The share of the VQA samples' questions asked bare and answered in a sentence, as chat asks them (the rest carry
# LLaVA-1.5's short-answer prompt and are answered in a word). The answers of both halves are balanced.
IN_SENTENCES = 1 / 4


def stage1_pairs(items: list[dict], seed: int) -> list[dict]:
    """Stage-1 data: a brief-description instruction and one of the image's captions."""
    out = []
    for it in items:
        rng = random.Random(f"{seed}:{it['id']}:stage1")
        pair = (rng.choice(BRIEF_INSTRUCTIONS), rng.choice(it["context"]["captions"]))
        out.append({"id": f"{it['id']}_cap", "image": it["image"], "conversations": llava_turns([pair])})
    return out


def opened_with_description(detail: list[dict], conversation: list[dict]) -> list[dict]:
    """The conversation, opened by the detailed description in place of its last question: a student's chat often
    starts with "Describe the image." and goes on from the answer, and a model that never saw such a chat loses
    track of the image after a long answer of its own."""
    rest = [{**conversation[0], "value": conversation[0]["value"].replace("<image>\n", "")}, *conversation[1:]]
    return detail + (rest[:-2] if len(rest) > 2 else rest)


def inventory(boxes: list[str], rng: random.Random, heldout: bool = False) -> tuple[str, str]:
    """A question and its answer naming every object shape first, then its colour and place, in a drawn order:
    "star yellow top right, rectangle orange center, circle teal left." Each colour is the token right after its
    shape word, a look-up from that token alone, and each place the token after the colour: the descriptions ("a
    yellow star") train only colour -> shape, while "What colour is the star?" and "Where is the red star?" need
    these two (lesson 10, section 4; docs/EXPERIMENTS.md, 2026-12-07 (night))."""
    objs = parse_objects(boxes)
    items = [" ".join(w for w in (o["noun"], o["color"], position_name(o["cx"], o["cy"], margin=0)) if w)
             for o in rng.sample(objs, len(objs))]
    return ask("inventory", rng, heldout), ", ".join(items) + "."


def presence(boxes: list[str], vocabulary: list[str], rng: random.Random, heldout: bool = False) -> tuple[str, str]:
    """A question a student asks about one attribute alone, or about the largest object, and its answer:
    "Is there a star?" -> "Yes, there are two stars in the image." (a shape, present or not, half and half),
    "Can you see red in the image?" -> "Yes, there is a red circle in the image." (a colour, the same), "Which
    object is the largest?" -> "The largest object is the teal circle." (only where one is clearly the largest, as
    the detailed description says it, and its name is its own). A shape's answer gives its count, not its colours:
    naming them is the colour look-up, which the model is weakest at (lesson 10), while a colour's answer names its
    shapes, the look-up it does well."""
    objs = parse_objects(boxes)
    colors = {o["color"] for o in objs if o["color"]}
    kinds = ["exists_shape"] + (["exists_color"] if colors else [])
    big = clearly_largest(objs)
    if big and [o["name"] for o in objs].count(big["name"]) == 1:        # "the orange square" names one
        kinds.append("largest")
    kind = rng.choice(kinds)
    if kind == "largest":
        return ask(kind, rng, heldout), f"The largest object is the {big['name']}."
    key = "noun" if kind == "exists_shape" else "color"
    present = sorted({o[key] for o in objs if o[key]})
    absent = sorted({split_name(n)[1 if key == "noun" else 0] for n in vocabulary} - set(present) - {None})
    value = rng.choice(present if not absent or rng.random() < 0.5 else absent)
    there = [o["name"] for o in objs if o[key] == value]
    if key == "noun":
        question = ask(kind, rng, heldout, a_noun=article(value), nouns=plural(value))
        if not there:
            return question, f"No, there is no {value} in the image."
        return question, (f"Yes, there is {article(value)} in the image." if len(there) == 1 else
                          f"Yes, there are {count_phrase(len(there), value)} in the image.")
    question = ask(kind, rng, heldout, color=value, a_color=article(value))
    if not there:
        return question, f"No, there is no {value} object in the image."
    if len(there) == 1:
        return question, f"Yes, there is {article(there[0])} in the image."
    names = sorted(set(there), key=there.index)
    listing = join([article(n) if there.count(n) == 1 else count_phrase(there.count(n), n) for n in names])
    return question, f"Yes, there are {count_phrase(len(there), value + ' object')} in the image: {listing}."


def with_turn(conversation: list[dict], qa: tuple[str, str], rng: random.Random, keep: int = 0) -> list[dict]:
    """The conversation with one more question and answer, put after a random number (at least `keep`) of its
    question-answer pairs; the image stays in front of the first question (llava_turns puts it there)."""
    pairs = [(q["value"].replace("<image>\n", ""), a["value"]) for q, a in zip(conversation[::2], conversation[1::2])]
    pairs.insert(rng.randint(keep, len(pairs)), qa)
    return llava_turns(pairs)


def make_instruct_data(items: list[dict], teacher, seed: int, vocabulary: list[str] | None = None,
                       balancer: AnswerBalancer | None = None, progress: bool = True,
                       vqa_rounds: int = 1) -> list[dict]:
    """LLaVA JSON for items {id, image, context}: conv, detail, complex per image (rejected replies are skipped; a
    third of the conversations open with the detailed description, opened_with_description, and every one gets an
    inventory turn, inventory, and a presence turn, presence), plus, with a balancer, one multi-turn short-answer
    VQA sample per image (ids end in _conv/_detail/_complex/_vqa).

    The VQA sample asks `vqa_rounds` rounds of short_answer_questions (at most one question per type per round,
    none twice), as LLaVA-1.5 puts all of an image's VQA questions in one conversation: each extra answer costs a
    dozen tokens, while the image costs its patches once. A share of them (IN_SENTENCES) is asked without the
    short-answer prompt and answered in a sentence: the conversations ask these kinds too, but only a few turns per
    image and with the answers as they fall ("How many red objects?" mostly "none"), while these are balanced; with
    the prompt beside, the same chat shows the format follow the prompt."""
    out = []
    for it in tqdm(items, desc="teacher", disable=not progress):
        written = {}
        for kind, write in (("conv", teacher.conversation), ("detail", teacher.detail),
                            ("complex", teacher.complex)):
            turns = write(it["context"], random.Random(f"{seed}:{it['id']}:{kind}"))
            if turns:
                written[kind] = turns
        opened = {"conv", "detail"} <= written.keys() and \
            random.Random(f"{seed}:{it['id']}:opening").random() < DESCRIPTION_FIRST
        if opened:
            written["conv"] = opened_with_description(written["detail"], written["conv"])
        if "conv" in written:
            rng, heldout = random.Random(f"{seed}:{it['id']}:inventory"), getattr(teacher, "heldout", False)
            qa = inventory(it["context"]["boxes"], rng, heldout)
            written["conv"] = with_turn(written["conv"], qa, rng, keep=1 if opened else 0)
            rng = random.Random(f"{seed}:{it['id']}:presence")
            vocab = vocabulary or getattr(teacher, "vocabulary", [])
            qa = presence(it["context"]["boxes"], vocab, rng, heldout)
            written["conv"] = with_turn(written["conv"], qa, rng, keep=1 if opened else 0)
        out += [{"id": f"{it['id']}_{kind}", "image": it["image"], "conversations": turns}
                for kind, turns in written.items()]
        if balancer is not None:
            qs = []
            for _ in range(vqa_rounds):
                qs += short_answer_questions(it["context"]["boxes"], vocabulary, balancer,
                                             exclude=frozenset(q["key"] for q in qs))
            if qs:
                rng = random.Random(f"{seed}:{it['id']}:sentences")
                pairs = [(q["question"], q["sentence"]) if rng.random() < IN_SENTENCES else
                         (q["question"] + SHORT_ANSWER_PROMPT, q["answer"]) for q in qs]
                out.append({"id": f"{it['id']}_vqa", "image": it["image"], "conversations": llava_turns(pairs)})
    return out
