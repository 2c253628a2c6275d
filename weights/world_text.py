"""The world's text as the tiny bases learn it: captions, and the stage-2 chats with the scene in words where the
image will be (weights/make_tiny.py trains the tokenizer and the LLM on it), and its fingerprint for the model cards.

    text = read_world_text("data/shapes", ["data/easyvqa/easyvqa_train.json"])
    text["text"]           # every training text (tokenizer, pretraining); text["instructions"]: the tuning chats
    text_fingerprint(text["text"])   # {texts, sha256, words}: which version of the world the bases saw
"""
from __future__ import annotations

import hashlib
import os
import re

from llava_mini.data.conversation import get_template
from llava_mini.data.dataset import shuffled_turns
from llava_mini.data.tokenizer import IMAGE_TOKEN
from llava_mini.jsonio import read_json
from llava_mini.synth.world import scene_in_words

CHAT_TEMPLATE = "vicuna_v1"           # the LM learns the stage-2 chat format from text alone



def strip_image(turns: list[dict]) -> list[dict]:
    """The conversation without its image: drop the `<image>` placeholder and the newline that goes with it."""
    return [{**t, "value": t["value"].replace(IMAGE_TOKEN + "\n", "").replace("\n" + IMAGE_TOKEN, "")
             .replace(IMAGE_TOKEN, "").strip()} for t in turns]


def scene_chats(turns: list[dict], context: str | None = None, pairs: int = 3) -> list[list[str]]:
    """A conversation's turn texts without its image, cut into chats of at most `pairs` question-answer pairs (a
    short-answer sample asks about twenty). With `context` (the scene in words), the description takes the image's
    place at the start of each chat's first user turn."""
    values = [t["value"] for t in strip_image(turns)]
    chats = [values[i:i + 2 * pairs] for i in range(0, len(values), 2 * pairs)]
    return [[f"{context}\n{c[0]}" if context else c[0], *c[1:]] for c in chats]


def chat_text(turns: list[str]) -> str:
    """Turn texts rendered as one chat in CHAT_TEMPLATE (what the tokenizer learns from)."""
    return "".join(seg.text for seg in get_template(CHAT_TEMPLATE).render(turns))


def read_world_text(data_dir: str, extra_files: list[str]) -> dict:
    """Training and held-out text for the tokenizer and the LM, as turn lists (rendered with CHAT_TEMPLATE).

    - "captions": the train scenes' captions, plain text;
    - "chats": every stage-2 conversation with its scene in words (world.scene_in_words) where the image would be, and the extra
      LLaVA-JSON files (easy-VQA) as plain chats. The LM first reads all of it (pretraining), then is
      instruction-tuned on the world's chats with the loss on the answers only, as Vicuna was tuned on chats. So it
      learns to answer about a scene described before the question; LLaVA later replaces that description by image
      tokens, and stage 1 teaches the projector to make image tokens the LM can read the same way;
    - "instructions": the world's chats of the above (the instruction-tuning set);
    - "test": the test scenes' captions and test questions in the same form (the held-out loss).
    None of it holds a held-out phrasing (world.generate_dataset writes them into test.json only)."""
    train_scenes = read_json(os.path.join(data_dir, "scenes_train.json"))
    test_scenes = read_json(os.path.join(data_dir, "scenes_test.json"))
    described = {s["id"]: scene_in_words(s) for s in train_scenes + test_scenes}
    instructions = [chat for e in read_json(os.path.join(data_dir, "stage2.json"))
                    for chat in scene_chats(shuffled_turns(e, seed=0)["conversations"] if e["id"].endswith("_vqa")
                                            else e["conversations"], described[e["id"].rsplit("_", 1)[0]])]
    extra = [chat for path in extra_files for e in read_json(path) for chat in scene_chats(e["conversations"])]
    held_out = [[f"{described[q['id'].rsplit('_', 1)[0]]}\n{q['question']}", q["answer"]]
                for q in read_json(os.path.join(data_dir, "test.json"))]
    return {"captions": [c for s in train_scenes for c in s["captions"]], "chats": instructions + extra,
            "instructions": instructions,
            "text": [c for s in train_scenes for c in s["captions"]] + [chat_text(c) for c in instructions + extra],
            "test": [c for s in test_scenes for c in s["captions"]] + [chat_text(c) for c in held_out],
            "train_scenes": train_scenes, "test_scenes": test_scenes}


def text_fingerprint(texts: list[str]) -> dict:
    """Which version of the world's text the bases learned: its sha256, and every word in it (a test checks that
    today's world writes no word the shipped bases never saw)."""
    joined = "\n".join(texts)
    return {"texts": len(texts), "sha256": hashlib.sha256(joined.encode()).hexdigest(),
            "words": sorted(set(world_words(joined)))}


def world_words(text: str) -> list[str]:
    """The words of a text, lower case ("A red circle." -> ["a", "red", "circle"])."""
    return re.findall(r"[a-z]+", text.lower())
