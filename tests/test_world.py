"""The shapes world: determinism, answers true of the scene, boxes that match the pixels, file formats, balance,
and the easy-VQA importer."""
import filecmp
import json
import os
import random
from collections import Counter

import numpy as np
import pytest

from llava_mini.data.conversation import SHORT_ANSWER_PROMPT
from llava_mini.eval.scoring import answer_in_sentence
from llava_mini.synth import world
from llava_mini.synth.phrasings import question_parser
from llava_mini.synth.teacher import BRIEF_INSTRUCTIONS, AnswerBalancer, short_answer_questions

N_TRAIN, N_TEST = 24, 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    stats = world.generate_dataset(str(out), N_TRAIN, N_TEST, seed=3, quiet=True)
    return str(out), stats


def read(root, name):
    with open(os.path.join(root, name)) as f:
        return json.load(f)


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    world.generate_dataset(str(tmp_path / "again"), N_TRAIN, N_TEST, seed=3, quiet=True)
    files = all_files(root)
    assert files == all_files(tmp_path / "again") and len(files) == N_TRAIN + N_TEST + 7
    _, mismatch, errors = filecmp.cmpfiles(root, tmp_path / "again", files, shallow=False)
    assert mismatch == [] and errors == []
    world.generate_dataset(str(tmp_path / "other"), N_TRAIN, N_TEST, seed=4, quiet=True)
    assert read(root, "scenes_train.json") != read(tmp_path / "other", "scenes_train.json")


# An independent oracle: re-derive each answer from the scene's objects (not from the boxes text the teacher read).
# The question is read by the phrasing parser, so every wording, seen or held out, is checked.
PARSE = question_parser(world.vocabulary(world.WorldConfig()))


def oracle(question, objects):
    def pos(o):
        x1, y1, x2, y2 = o["bbox"]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
        row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
        return f"{row} {col}".strip() or "center"

    def only(matches):
        assert len(matches) == 1, f"ambiguous question {q!r}"
        return matches[0]

    q = question.removesuffix(SHORT_ANSWER_PROMPT).replace("<image>\n", "")
    parsed = PARSE(q)
    assert parsed, f"unknown question form {q!r}"
    kind, _, f = parsed
    named = lambda name: [o for o in objects if f"{o['color']} {o['shape']}" == name]  # noqa: E731
    if kind == "count":
        return str(len(objects))
    if kind == "count_color":
        return str(sum(o["color"] == f["color"] for o in objects))
    if kind == "count_shape":
        return str(sum(o["shape"] + "s" == f["nouns"] for o in objects))
    if kind == "color":
        return only([o for o in objects if o["shape"] == f["noun"]])["color"]
    if kind == "shape":
        return only([o for o in objects if o["color"] == f["color"]])["shape"]
    if kind == "exists":
        return "yes" if named(f["a_name"].split(" ", 1)[1]) else "no"
    if kind == "position":
        return pos(only(named(f["name"])))
    raise AssertionError(f"not a short-answer question {q!r}")


def test_every_short_answer_is_true_of_the_scene(dataset):
    root, _ = dataset
    scenes = {s["image"]: s for split in ("train", "test") for s in read(root, f"scenes_{split}.json")}
    test = read(root, "test.json")
    for q in test:
        assert oracle(q["question"], scenes[q["image"]]["objects"]) == q["answer"], q
    vqa = [e for e in read(root, "stage2.json") if e["id"].endswith("_vqa")]
    assert len(vqa) == N_TRAIN
    checked = in_sentences = 0
    for e in vqa:
        turns = e["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            truth = oracle(human["value"], scenes[e["image"]]["objects"])
            if human["value"].endswith(SHORT_ANSWER_PROMPT):
                assert gpt["value"] == truth, (e["id"], human)
            else:                            # asked as chat asks it: the sentence states the answer
                kind = PARSE(human["value"].replace("<image>\n", ""))[0]
                assert answer_in_sentence(kind, gpt["value"]) == truth, (e["id"], human, gpt)
                in_sentences += 1
            checked += 1
    assert checked >= 5 * N_TRAIN
    assert 0.1 < in_sentences / checked < 0.4
    assert {q["question_type"] for q in test} == {"count", "count_color", "count_shape", "color", "shape", "exists",
                                                  "position"}


def test_heldout_phrasings_never_reach_a_training_file(dataset):
    """Every human turn of stage 1 and stage 2 was written by a seen phrasing (or is a stage-1 caption request);
    test.json and bench.json ask both kinds, and say which."""
    root, _ = dataset
    for name in ("stage1.json", "stage2.json"):
        for e in read(root, name):
            for turn in e["conversations"][::2]:
                q = turn["value"].replace("<image>\n", "").removesuffix(SHORT_ANSWER_PROMPT)
                parsed = PARSE(q)
                assert (parsed and parsed[1] == "seen") or (name == "stage1.json" and q in BRIEF_INSTRUCTIONS), \
                    (name, e["id"], q)
    test = read(root, "test.json")
    assert {q["phrasing"] for q in test} == {"seen", "heldout"}
    assert all(PARSE(q["question"])[1] == q["phrasing"] for q in test)
    bench = read(root, "bench.json")
    assert {b["phrasing"] for b in bench} == {"seen", "heldout"}
    assert all(PARSE(b["question"]) is None or PARSE(b["question"])[1] == b["phrasing"] for b in bench)


def test_the_wording_probe_asks_the_same_question_in_words_the_teacher_never_writes(dataset):
    """benchmarks/probe_wordings.py: each test question comes back in a new wording that asks about the same thing
    (the same fields, the same answer), and no new wording is one of phrasings.py's, seen or held out."""
    from conftest import load_script
    probe = load_script("benchmarks/probe_wordings.py")
    root, _ = dataset
    test = read(root, "test.json")
    new = probe.reworded(test, PARSE)
    for q, n in zip(test, new):
        assert PARSE(n["question"]) is None, n["question"]           # neither seen nor held out
        assert n["answer"] == q["answer"] and n["question_type"] == q["question_type"]
        fields = PARSE(q["question"])[2]
        assert n["question"] == n["wording"].format(**fields) and all(v in n["question"] for v in fields.values())
    assert {n["wording"] for n in new} <= {w for ws in probe.NEW_WORDINGS.values() for w in ws}
    with pytest.raises(ValueError, match="q0.*no wording"):
        probe.reworded([{"id": "q0", "question": "Why is the sky blue?"}], PARSE)


def test_scene_in_words_says_where_every_object_is():
    """What a text-only LLM reads for a scene holds each object's place (the boxes, in words), also when the
    scene's three captions happened to leave the places sentence out, so every position question can be
    answered from it (eval/text_qa.py, the bases' instruction tuning)."""
    rng, cfg = random.Random(3), world.WorldConfig(image_size=64)
    scenes = [world.sample_scene(rng, cfg, f"s{i}", "x.png") for i in range(40)]
    without = [s for s in scenes if not any(c.startswith("There is ") for c in s["captions"])]
    assert without and len(without) < len(scenes)                  # both kinds occur
    for scene in scenes:
        words = world.scene_in_words(scene)
        assert words.count("There is ") == 1 and all(c in words for c in scene["captions"])
        for o in scene["objects"]:
            cx, cy = (o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2
            place = world.position_name(cx, cy, margin=0)
            assert f"{o['color']} {o['shape']} {'in the center' if place == 'center' else 'at the ' + place}" in words


def test_objects_captions_and_descriptions_read_like_a_page(dataset):
    """Every scene lists its objects top third first, each third left to right, and its captions and the teacher's
    detailed description name them in that order (so "Describe the image." is one scan of the image)."""
    root, _ = dataset
    scenes = {s["id"]: s for s in read(root, "scenes_train.json")}
    for scene in scenes.values():
        keys = [world.reading_order(o) for o in scene["objects"]]
        assert keys == sorted(keys)
        rows = [row for row, _ in keys]
        assert all(0 <= r <= 2 for r in rows)
    several = [s for s in scenes.values() if len({r for r, _ in map(world.reading_order, s["objects"])}) > 1]
    assert several                                                  # scenes that span more than one third occur
    for entry in read(root, "stage2.json"):
        if not entry["id"].endswith("_detail"):
            continue
        scene = scenes[entry["id"].rsplit("_", 1)[0]]
        answer = entry["conversations"][1]["value"]
        spots = [answer.index(f"There is {world.article(o['color'] + ' ' + o['shape'])} ") for o in scene["objects"]
                 if sum(p["color"] == o["color"] and p["shape"] == o["shape"] for p in scene["objects"]) == 1]
        assert spots == sorted(spots), entry["id"]


@pytest.mark.parametrize("rotate", [False, True])
def test_boxes_inside_image_and_match_pixels(rotate):
    cfg = world.WorldConfig(image_size=64, rotate=rotate)
    rng = random.Random(11)
    for i in range(40):
        scene = world.sample_scene(rng, cfg, f"s{i}", "x.png")
        img = np.asarray(world.render(scene)).astype(int)  # (H, W, 3)
        size = scene["width"]
        foreground = np.abs(img - np.array(world.BACKGROUND[1])).sum(-1) > 30  # (H, W)
        covered = np.zeros_like(foreground)
        for o in scene["objects"]:
            x1, y1, x2, y2 = o["bbox"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            # The object's own colour is at the centre of its box (all shapes contain their box centre).
            px = img[int((y1 + y2) / 2 * size), int((x1 + x2) / 2 * size)]
            assert np.abs(px - np.array(world.COLORS[o["color"]])).max() < 40, (scene["id"], o)
            # Its pixels fill the box: the tight extent of foreground inside the (1 px grown) box equals the box.
            a, b = max(0, int(x1 * size) - 1), min(size, int(np.ceil(x2 * size)) + 1)
            c, d = max(0, int(y1 * size) - 1), min(size, int(np.ceil(y2 * size)) + 1)
            covered[c:d, a:b] = True
            ys, xs = np.nonzero(foreground[c:d, a:b])
            extent = np.array([xs.min() + a, ys.min() + c, xs.max() + a + 1, ys.max() + c + 1]) / size
            assert np.abs(extent - np.array(o["bbox"])).max() <= 1.5 / size, (scene["id"], o, extent)
        assert not (foreground & ~covered).any(), f"{scene['id']}: pixels drawn outside every box"


def check_llava_json(entries, root, exact_turns=None):
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for e in entries:
        assert set(e) == {"id", "image", "conversations"}, e["id"]
        assert os.path.isfile(os.path.join(root, e["image"])), e["image"]
        turns = e["conversations"]
        assert len(turns) >= 2 and len(turns) % 2 == 0 and (exact_turns is None or len(turns) == exact_turns)
        for i, t in enumerate(turns):
            assert set(t) == {"from", "value"} and t["from"] == ("human", "gpt")[i % 2] and t["value"].strip()
        assert turns[0]["value"].startswith("<image>\n"), e["id"]
        assert sum(t["value"].count("<image>") for t in turns) == 1, e["id"]


def test_files_follow_the_contract(dataset):
    root, stats = dataset
    check_llava_json(read(root, "stage1.json"), root, exact_turns=2)
    stage2 = read(root, "stage2.json")
    check_llava_json(stage2, root)
    assert Counter(e["id"].rsplit("_", 1)[1] for e in stage2) == {k: N_TRAIN for k in ("conv", "detail", "complex", "vqa")}
    for e in stage2:
        asks = [t["value"] for t in e["conversations"][::2]]
        answers = [t["value"] for t in e["conversations"][1::2]]
        if e["id"].endswith("_vqa"):           # with the prompt a word or two, without it a sentence
            for q, a in zip(asks, answers):
                assert (a == a.lower() and len(a.split()) <= 2) if q.endswith(SHORT_ANSWER_PROMPT) else \
                    (a[0].isupper() and a.endswith(".") and len(a.split()) >= 4), (q, a)
        else:
            assert not any(SHORT_ANSWER_PROMPT in q for q in asks)
    for q in read(root, "test.json"):
        lookup = q["question_type"] in ("color", "shape", "position")
        assert set(q) == {"id", "image", "question", "answer", "question_type", "phrasing"} | ({"choices"} if lookup else set())
        assert q["answer"] == q["answer"].lower() and "<image>" not in q["question"]
        assert not q["question"].endswith(SHORT_ANSWER_PROMPT) and q["image"].startswith("images/test/")
    bench = read(root, "bench.json")
    per_category = min(world.BENCH_IMAGES, N_TEST)            # one question per category on each bench image
    assert Counter(b["category"] for b in bench) == {"conv": per_category, "detail": per_category,
                                                     "complex": per_category}
    for b in bench:
        assert b["reference"] and "<image>" not in b["question"] and b["scene"]["image"] == b["image"]
        assert len(b["context"]["boxes"]) == len(b["scene"]["objects"]) and b["context"]["captions"]
    scenes = read(root, "scenes_test.json")
    for s in scenes:
        assert {"id", "image", "width", "height", "background", "objects", "captions"} <= set(s)
        for o, line in zip(s["objects"], world.symbolic_context(s)["boxes"]):
            assert line.startswith(f"{o['color']} {o['shape']}: [")
            assert {"shape", "color", "size", "bbox"} <= set(o)
    assert stats["test"]["exists"]["count"] == N_TEST
    for s in scenes:        # a caption that says where objects are names the grid cell of each box centre
        for caption in (c for c in s["captions"] if c.startswith("There is ")):
            for o in s["objects"]:
                x1, y1, x2, y2 = o["bbox"]
                cell = world.position_name((x1 + x2) / 2, (y1 + y2) / 2, margin=0)
                place = "in the center" if cell == "center" else f"at the {cell}"
                assert f"{o['color']} {o['shape']} {place}" in caption, (caption, o)


def test_answers_are_balanced():
    """A blind model that always gives a type's most common answer stays near chance."""
    cfg = world.WorldConfig()
    rng, balancer = random.Random(5), AnswerBalancer(random.Random(6))
    for i in range(600):
        scene = world.sample_scene(rng, cfg, f"s{i}", "x.png")
        short_answer_questions(world.symbolic_context(scene)["boxes"], world.vocabulary(cfg), balancer)
    stats = world.answer_statistics(balancer.asked)
    limits = {"exists": 0.51, "color": 0.12, "shape": 0.2, "position": 0.15, "count": 0.3, "count_color": 0.36,
              "count_shape": 0.36}
    for qtype, limit in limits.items():
        assert stats[qtype]["majority_rate"] <= limit, (qtype, stats[qtype])
        assert stats[qtype]["count"] >= 450, (qtype, stats[qtype]["count"])


def test_easyvqa_import(tmp_path):
    from llava_mini.synth.easyvqa import import_easyvqa
    stats = import_easyvqa(str(tmp_path), progress=False)
    assert stats["train"]["images"] == 4000 and stats["test"]["images"] == 1000
    train, test = read(tmp_path, "easyvqa_train.json"), read(tmp_path, "easyvqa_test.json")
    check_llava_json(train[:50], str(tmp_path))
    assert len(train) == 4000 and sum(len(e["conversations"]) // 2 for e in train) == stats["train"]["questions"]
    assert len(test) == stats["test"]["questions"] == 9673
    assert Counter(q["question_type"] for q in test) == stats["test"]["per_type"]
    kinds = {"yes_no": {"yes", "no"}, "shape": {"circle", "rectangle", "triangle"}}
    for q in test:
        assert q["answer"] in kinds.get(q["question_type"], {"red", "green", "blue", "yellow", "black", "gray",
                                                             "teal", "brown"})
    assert os.path.isfile(tmp_path / test[-1]["image"])


def test_lookup_questions_say_how_many_answers_their_scene_offers(dataset):
    """"choices" is the number of different colours (shapes, grid cells) among the scene's objects: the right answer
    is one of them, and a scene with 1 gives its colour question away without finding the object."""
    root, _ = dataset
    scenes = {s["image"]: s for s in read(root, "scenes_test.json")}
    attribute = {"color": lambda o: o["color"], "shape": lambda o: o["shape"],
                 "position": lambda o: world.position_name(*o["center"], margin=0)}
    seen = Counter()
    for q in read(root, "test.json"):
        if q["question_type"] in attribute:
            offered = {attribute[q["question_type"]](o) for o in scenes[q["image"]]["objects"]}
            assert q["choices"] == len(offered) and q["answer"] in offered, q
            seen[q["choices"] >= 2] += 1
    assert seen[True] and seen[False]           # the fixture has both kinds

