"""The world's text as the tiny bases learn it: captions, and the stage-2 chats with the scene in words where the
image will be (weights/make_tiny.py trains the tokenizer and the LLM on it), the lookup drill's chats about new
scenes in words, and the text's fingerprint for the model cards.

    text = read_world_text("data/shapes", ["data/easyvqa/easyvqa_train.json"])
    text["text"]           # every training text (tokenizer, pretraining); text["instructions"]: the tuning chats
    lookup_chats(new_scenes(20000))   # the drill: short-answer chats about 20,000 scenes that exist only in words
    binding_texts(60000)             # the binding drill: listed scenes, then the facts that bind colour and shape
    text_fingerprint(text["text"])   # {texts, sha256, words}: which version of the world the bases saw
"""
from __future__ import annotations

import hashlib
import os
import random
import re

from llava_mini.data.conversation import SHORT_ANSWER_PROMPT, get_template
from llava_mini.data.dataset import shuffled_turns
from llava_mini.data.tokenizer import IMAGE_TOKEN
from llava_mini.jsonio import read_json
from llava_mini.synth.phrasings import article
from llava_mini.synth.teacher import AnswerBalancer, join, short_answer_questions, symbolic_context
from llava_mini.synth.world import COLORS, SHAPES, WorldConfig, sample_scene, scene_in_words, vocabulary

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


def new_scenes(n: int, seed: int = 0, kind: str = "lookup", cfg: WorldConfig | None = None) -> list[dict]:
    """`n` new scenes, drawn as the world draws its scenes (world.sample_scene) from a random stream of their own
    per `kind`, so none is one of the world's train or test scenes: "lookup" for the LLaMA's drill (in words only),
    "clip" for the CLIP's extra image-caption pairs (rendered in memory, tiny_clip.render_images). Never written."""
    cfg, rng = cfg or WorldConfig(), random.Random(f"{seed}:{kind}-scenes")
    return [sample_scene(rng, cfg, f"{kind}_{i:06d}", image="") for i in range(n)]


def lookup_chats(scenes: list[dict], seed: int = 0, rounds: int = 1, pairs: int = 3,
                 cfg: WorldConfig | None = None) -> list[list[str]]:
    """The lookup drill of make_tiny's last phase: short-answer chats about `scenes` (new_scenes), the scene in
    words before the first question. The teacher asks each scene `rounds` rounds of short-answer questions (seen
    phrasings only, answers balanced per type, each with LLaVA-1.5's answer-format prompt), in chats of `pairs`.

    Why: the world's own chats ask an image a dozen short questions beside long descriptions and reasoning; an LM
    tuned on them alone learns to count, but seldom to look an object up ("what shape is the red one?"), and a
    scene it has never read asks exactly that (docs/EXPERIMENTS.md)."""
    rng, names = random.Random(f"{seed}:lookup-order"), vocabulary(cfg or WorldConfig())
    balancer, chats = AnswerBalancer(random.Random(f"{seed}:lookup-questions")), []
    for scene in scenes:
        boxes, asked = symbolic_context(scene)["boxes"], []
        for _ in range(rounds):
            asked += short_answer_questions(boxes, names, balancer, exclude=frozenset(q["key"] for q in asked))
        rng.shuffle(asked)
        for start in range(0, len(asked), pairs):
            turns = [t for q in asked[start:start + pairs] for t in (q["question"] + SHORT_ANSWER_PROMPT, q["answer"])]
            chats.append([f"{scene_in_words(scene)}\n{turns[0]}", *turns[1:]])
    return chats


def listed_scene(rng: random.Random, objects: tuple[int, int] = (2, 4)) -> tuple[list[str], list[str], str]:
    """A scene that exists only as one caption of the world's form, its objects all of different colours and of
    different shapes: (colours, shapes, caption), the caption as "A picture of 3 shapes: an orange diamond, a red
    star and a white rectangle." """
    k = rng.randint(*objects)
    colors, shapes = rng.sample(sorted(COLORS), k), rng.sample(SHAPES, k)
    return colors, shapes, f"A picture of {k} shapes: {join([article(f'{c} {s}') for c, s in zip(colors, shapes)])}."


def binding_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """The binding drill of make_tiny's last phase: `n` listed scenes (listed_scene), each followed by both facts of
    every object in a random order, as (scene, facts): ("A picture of 2 shapes: a red star and a white rectangle.",
    "The rectangle is white. The red one is a star. The star is red. The white one is a rectangle.").

    Why: "What colour is the star?" about "a red star" needs two heads working together: one that writes "red" into
    the star's token, and one that finds that token from the question's "star". Neither lowers the loss until the
    other exists, so an LM sits on a plateau at picking one of the scene's colours; one answer per chat (the lookup
    drill) left the tiny LLaMA there for 8,500 steps. Here every fact is a look-up and every fact is trained, so a
    sample carries four to eight of them (docs/EXPERIMENTS.md, 2026-12-07 (afternoon))."""
    rng, texts = random.Random(f"{seed}:binding"), []
    for _ in range(n):
        colors, shapes, scene = listed_scene(rng)
        facts = [f for c, s in zip(colors, shapes) for f in (f"The {s} is {c}.", f"The {c} one is {article(s)}.")]
        rng.shuffle(facts)
        texts.append((scene, " ".join(facts)))
    return texts


def text_fingerprint(texts: list[str]) -> dict:
    """Which version of the world's text the bases learned: its sha256, and every word in it (a test checks that
    today's world writes no word the shipped bases never saw)."""
    joined = "\n".join(texts)
    return {"texts": len(texts), "sha256": hashlib.sha256(joined.encode()).hexdigest(),
            "words": sorted(set(world_words(joined)))}


def world_words(text: str) -> list[str]:
    """The words of a text, lower case ("A red circle." -> ["a", "red", "circle"])."""
    return re.findall(r"[a-z]+", text.lower())
