"""The teachers: the rule teacher's statements are true of the boxes, the COCO route on a hand-made fixture, and the
LLM teacher + ChatClient (retries, cache, rejections, key hygiene) against a fake OpenAI-compatible server."""
import json
import os
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llava_mini.data.conversation import SHORT_ANSWER_PROMPT
from llava_mini.eval.scoring import answer_in_sentence
from llava_mini.synth import world
from llava_mini.synth.coco import load_coco
from llava_mini.synth.llm_client import ChatClient, ChatError
from llava_mini.synth.llm_teacher import LLMTeacher, check_turns
from llava_mini.synth.phrasings import article, question_parser
from llava_mini.synth.claims import check_claim, extract_claims
from llava_mini.synth.instruct_data import inventory, make_instruct_data, presence
from llava_mini.synth.teacher import NUMBER_WORDS, AnswerBalancer, RuleTeacher, parse_objects, short_answer_questions

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "coco")
SECRET = "sk-test-secret-4242"


def scenes(n, seed=0):
    rng, cfg = random.Random(seed), world.WorldConfig()
    return [world.sample_scene(rng, cfg, f"s{i}", "x.png") for i in range(n)]


def grid_cell(cx, cy):
    """The 3x3 grid name of a point, written out independently of the teacher."""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    return f"{row} {col}".strip() or "center"


def place_phrase(cx, cy):
    cell = grid_cell(cx, cy)
    return "in the center of the image" if cell == "center" else f"at the {cell} of the image"


@pytest.mark.parametrize("heldout", [False, True])
def test_rule_teacher_statements_are_true_of_the_scene(heldout):
    vocab = world.vocabulary(world.WorldConfig())
    teacher, parse = RuleTeacher(vocab, heldout=heldout), question_parser(vocab)
    checked, kinds = 0, set()
    for s in scenes(150):
        ctx, objs = world.symbolic_context(s), s["objects"]
        centre = {f"{o['color']} {o['shape']}": ((o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2)
                  for o in objs}
        count = Counter(f"{o['color']} {o['shape']}" for o in objs)
        area = {f"{o['color']} {o['shape']}": (o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1]) for o in objs}
        rng = random.Random(s["id"])
        turns = teacher.conversation(ctx, rng) + teacher.complex(ctx, rng)
        assert turns[0]["value"].startswith("<image>\n")
        # The detailed description: one sentence per object, each at its true place.
        instruction, detail = [t["value"] for t in teacher.detail(ctx, rng)]
        assert parse(instruction.replace("<image>\n", ""))[:2] == ("detail", "heldout" if heldout else "seen")
        assert f"contains {NUMBER_WORDS[len(objs)]} object" in detail
        for name, (cx, cy) in centre.items():
            if count[name] == 1:      # near a grid line the teacher gives coordinates instead of a cell name
                near = re.search(rf"{name} near \(([\d.]+), ([\d.]+)\)", detail)
                assert f"{name} {place_phrase(cx, cy)}." in detail or (
                    near and abs(float(near[1]) - cx) < 0.011 and abs(float(near[2]) - cy) < 0.011), (name, detail)
        for q, a in zip([t["value"] for t in turns[::2]], [t["value"] for t in turns[1::2]]):
            q = q.replace("<image>\n", "")
            parsed = parse(q)
            assert parsed, f"no phrasing wrote {q!r}"
            kind, split, f = parsed
            assert split == ("heldout" if heldout else "seen"), q
            if kind == "count":
                assert f" {NUMBER_WORDS[len(objs)]} object" in a
            elif kind == "list":
                assert f"{NUMBER_WORDS[len(objs)]} object" in a.split(":")[0]
                assert all(a.count(f" {name}") == k for name, k in count.items()), (a, count)
            elif kind == "position":
                assert a == f"The {f['name']} is {place_phrase(*centre[f['name']])}.", (q, a)
            elif kind == "color":
                (color,) = [o["color"] for o in objs if o["shape"] == f["noun"]]
                assert a == f"The {f['noun']} is {color}.", (q, a)
            elif kind == "shape":
                (shape,) = [o["shape"] for o in objs if o["color"] == f["color"]]
                assert a == f"It is {article(f['color'] + ' ' + shape)}.", (q, a)
            elif kind == "count_color":
                k = sum(o["color"] == f["color"] for o in objs)
                assert f" {NUMBER_WORDS[k]} {f['color']} object" in a, (q, a)
            elif kind == "count_shape":
                shape = f["nouns"][:-1]
                k = sum(o["shape"] == shape for o in objs)
                assert f" {NUMBER_WORDS[k]} {shape}" in a, (q, a)
            elif kind == "add_one":
                name = f["name"]
                assert f"makes {count[name]} + 1 = {count[name] + 1} " in a
                assert f"{len(objs)} + 1 = {len(objs) + 1} objects" in a
            elif kind == "left_of":
                assert a.startswith("Yes" if centre[f["name"]][0] < centre[f["other"]][0] else "No"), (q, a)
            elif kind == "above":
                assert a.startswith("Yes" if centre[f["name"]][1] < centre[f["other"]][1] else "No"), (q, a)
            elif kind == "exists":
                name = f["a_name"].split(" ", 1)[1]
                assert a.startswith("Yes" if name in centre else "No"), (q, a)
            elif kind == "remove_group" and f["group"].endswith(" objects"):
                color = f["group"].split()[0]
                left = sum(o["color"] != color for o in objs)
                assert a.endswith(f"so {NUMBER_WORDS[left]} {'object' if left == 1 else 'objects'} would be left.")
            elif kind == "closest_to_corner":
                x, y = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1),
                        "bottom right": (1, 1)}[f["corner"]]
                best = min(centre, key=lambda n: (centre[n][0] - x) ** 2 + (centre[n][1] - y) ** 2)
                assert a.endswith(f"the {best} is closest to the {f['corner']} corner."), (q, a)
            elif kind == "compare_sizes":
                assert a.endswith(f"the {max((f['name'], f['other']), key=area.get)} is bigger."), (q, a)
            else:
                continue
            checked += 1
            kinds.add(kind)
    assert checked > 300
    assert len(kinds) >= 13, kinds        # every question kind above was met and checked


def test_a_third_of_the_conversations_open_with_the_description():
    """A chat that starts with "Describe the image." and goes on: the conversation sample opens with the image's
    detail sample (the same instruction and answer), and its questions follow without another <image>."""
    vocab = world.vocabulary(world.WorldConfig())
    items = [{"id": s["id"], "image": s["image"], "context": world.symbolic_context(s)} for s in scenes(150)]
    data = {e["id"]: e["conversations"] for e in make_instruct_data(items, RuleTeacher(vocab), seed=0, progress=False)}
    parse, opened = question_parser(vocab), 0
    for it in items:
        conv, detail = data[f"{it['id']}_conv"], data[f"{it['id']}_detail"]
        assert conv[0]["value"].startswith("<image>\n") and not any("<image>" in t["value"] for t in conv[1:])
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and 10 <= len(conv) <= 14
        kinds = [parse(q["value"].replace("<image>\n", ""))[0] for q in conv[::2]]
        assert kinds.count("inventory") == 1 and sum(k in PRESENCE_KINDS for k in kinds) == 1, kinds
        if conv[:2] == detail:
            opened += 1
            assert "<image>" not in conv[2]["value"] and conv[3]["value"] != detail[1]["value"]
    assert 30 <= opened <= 70, opened          # a third of 150, give or take the draw


@pytest.mark.parametrize("heldout", [False, True])
def test_the_inventory_names_every_object_shape_first_then_colour_and_place(heldout):
    """"star yellow top right, ...": every object once, each with its own colour and grid cell, in a drawn order."""
    parse, firsts = question_parser(world.vocabulary(world.WorldConfig())), set()
    for s in scenes(100):
        q, a = inventory(world.symbolic_context(s)["boxes"], random.Random(s["id"]), heldout)
        assert parse(q)[:2] == ("inventory", "heldout" if heldout else "seen"), q
        box = [[round(v, 2) for v in o["bbox"]] for o in s["objects"]]      # the teacher sees boxes to 2 places
        truth = [f"{o['shape']} {o['color']} {grid_cell((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)}"
                 for o, b in zip(s["objects"], box)]
        assert a.endswith(".") and Counter(a[:-1].split(", ")) == Counter(truth), (a, truth)
        firsts.add(a.split(", ")[0] == truth[0])
    assert firsts == {True, False}            # not always in the scene's own order


PRESENCE_KINDS = ("exists_shape", "exists_color", "largest")


@pytest.mark.parametrize("heldout", [False, True])
def test_presence_questions_ask_one_attribute_and_answer_truly(heldout):
    """"Is there a star?", "Is anything red?", "Which object is the largest?": each answer is read back with
    the rule judge's parser and checked against the scene; shapes and colours are asked present and absent."""
    vocab = world.vocabulary(world.WorldConfig())
    parse, asked = question_parser(vocab), Counter()
    for s in scenes(200):
        q, a = presence(world.symbolic_context(s)["boxes"], vocab, random.Random(s["id"]), heldout)
        kind, split, fields = parse(q)
        assert kind in PRESENCE_KINDS and split == ("heldout" if heldout else "seen"), q
        claims = extract_claims(a)
        assert claims and all(check_claim(c, s) for c in claims), (q, a, s["objects"])
        if kind == "largest":
            boxes = [[round(v, 2) for v in o["bbox"]] for o in s["objects"]]     # the teacher sees 2 places
            area = sorted(((b[2] - b[0]) * (b[3] - b[1]), f"{o['color']} {o['shape']}")
                          for o, b in zip(s["objects"], boxes))
            named = a.removeprefix("The largest object is the ").removesuffix(".")
            assert named == area[-1][1] and area[-2][0] * 1.2 < area[-1][0], (a, area)
            assert [n for _, n in area].count(named) == 1, (a, area)
            asked["largest"] += 1
            continue
        key = "shape" if kind == "exists_shape" else "color"
        if key == "shape":          # "Is there a star?" or "Are there stars in the image?"
            value = fields["a_noun"].split()[1] if fields.get("a_noun") else fields["nouns"].removesuffix("s")
        else:                       # "Is there a red object?" or "Is there red in the image?"
            value = fields["a_color"].split()[1] if fields.get("a_color") else fields["color"]
        there = sum(o[key] == value for o in s["objects"])
        assert a.startswith("Yes" if there else "No"), (q, a)
        shapes = Counter(o["shape"] for o in s["objects"] if o["color"] == value)
        if key == "color" and there == 1:       # the one object of the colour, named with its shape
            assert a == f"Yes, there is {article(value + ' ' + next(iter(shapes)))} in the image.", (q, a)
        elif key == "color" and there:          # every one: "...: an orange diamond and two orange squares."
            listed = extract_claims(a.partition(":")[2])
            counts = {c.shape: c.number for c in listed if c.kind == "count"}
            assert {c.shape: counts.get(c.shape, 1) for c in listed if c.kind == "object"} == shapes, (q, a)
        asked[kind, bool(there)] += 1
    assert all(asked[k] >= 15 for k in [("exists_shape", True), ("exists_shape", False), ("exists_color", True),
                                          ("exists_color", False), "largest"]), asked


def test_coco_route_on_fixture():
    items, vocab = load_coco(os.path.join(FIXTURES, "captions.json"), os.path.join(FIXTURES, "instances.json"))
    assert vocab == ["chair", "dog", "person"]
    assert [it["id"] for it in items] == ["7", "9"]  # image 12 has no caption: skipped
    assert items[0]["image"] == "000000000007.jpg" and len(items[0]["context"]["captions"]) == 2
    assert items[0]["context"]["boxes"] == ["person: [0.10, 0.10, 0.30, 0.60]", "person: [0.70, 0.20, 0.90, 0.80]",
                                            "dog: [0.40, 0.70, 0.65, 0.90]"]
    assert items[1]["context"]["boxes"] == ["chair: [0.75, 0.05, 1.00, 0.20]"]  # clipped at the right edge

    balancer = AnswerBalancer(random.Random(0))
    data = make_instruct_data(items, RuleTeacher(vocab), seed=0, vocabulary=vocab, balancer=balancer, progress=False)
    assert [e["id"] for e in data] == [f"{i}_{k}" for i in ("7", "9") for k in ("conv", "detail", "complex", "vqa")]
    truth = {"7": {"person": 2, "dog": 1, "chair": 0}, "9": {"person": 0, "dog": 0, "chair": 1}}
    for q in balancer.asked:
        assert q["question_type"] in {"count", "count_shape", "exists", "position"}  # no colours in COCO names
    vqa = {e["id"].split("_")[0]: e["conversations"] for e in data if e["id"].endswith("_vqa")}
    forms = Counter()
    for image_id, turns in vqa.items():
        for human, gpt in zip(turns[::2], turns[1::2]):
            prompted = human["value"].endswith(SHORT_ANSWER_PROMPT)     # else answered in a sentence, as in chat
            forms[prompted] += 1

            def said(qtype):
                return gpt["value"] if prompted else answer_in_sentence(qtype, gpt["value"])
            q = human["value"].replace("<image>\n", "").split("\n")[0]
            if q == "How many objects are there?":
                assert said("count") == str(sum(truth[image_id].values()))
            elif q.startswith("How many "):
                noun = {"people": "person", "dogs": "dog", "chairs": "chair"}[q.split()[2]]
                assert said("count_shape") == str(truth[image_id][noun])
            elif q.startswith("Is there "):
                assert said("exists") == ("yes" if truth[image_id][q.split()[3].rstrip("?")] else "no")
    assert forms[True] and forms[False]
    detail = next(e for e in data if e["id"] == "7_detail")["conversations"][1]["value"]
    assert "three objects" in detail and "a dog at the bottom of the image" in detail


def test_coco_bad_annotation_names_it(tmp_path):
    inst = json.load(open(os.path.join(FIXTURES, "instances.json")))
    inst["annotations"][1]["category_id"] = 999
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps(inst))
    with pytest.raises(ValueError, match="annotation 102"):
        load_coco(os.path.join(FIXTURES, "captions.json"), str(bad))


# ---------------------------------------------------------------------------- fake OpenAI-compatible server

GOOD_REPLY = json.dumps([{"from": "human", "value": "What is in the image?"},
                         {"from": "gpt", "value": "Two people and a dog."}])


class FakeServer:
    """Answers POST /v1/chat/completions from a script of (status, content, delay) and records every request."""

    def __init__(self):
        self.script, self.requests = [], []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):                   # a redirected POST that became a GET would land here
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": None})
                self.send_response(200)
                self.end_headers()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, content, delay = server.script.pop(0) if server.script else (200, GOOD_REPLY, 0)
                time.sleep(delay)
                if status in ("raw", "trickle"):                   # content: the body's bytes, as they are
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    try:
                        for i in range(len(content)) if status == "trickle" else [None]:
                            self.wfile.write(content if i is None else content[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.2 if status == "trickle" else 0)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if status in (301, 302, 303, 307, 308):            # content: where to
                    self.send_response(status)
                    self.send_header("Location", content)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if status == 200:
                    payload = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                else:
                    payload = {"error": content}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client already timed out
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def make_client(server, tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("LLAVA_MINI_TEST_KEY", SECRET)
    return ChatClient(server.url, "fake-model", api_key_env="LLAVA_MINI_TEST_KEY", cache_dir=str(tmp_path / "cache"),
                      backoff=0.01, **kw)


def test_llm_teacher_retries_then_caches(server, tmp_path, monkeypatch):
    client = make_client(server, tmp_path, monkeypatch, max_retries=4, timeout=0.5)
    server.script = [(429, "slow down", 0), (503, "overloaded", 0), (200, GOOD_REPLY, 1.0), (200, GOOD_REPLY, 0)]
    teacher = LLMTeacher(client)
    items, _ = load_coco(os.path.join(FIXTURES, "captions.json"), os.path.join(FIXTURES, "instances.json"))
    turns = teacher.conversation(items[0]["context"])
    assert turns == [{"from": "human", "value": "<image>\nWhat is in the image?"},
                     {"from": "gpt", "value": "Two people and a dog."}]
    assert len(server.requests) == 4 and client.http_requests == 4  # 429, 503, timeout, success
    req = server.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {SECRET}"
    messages = req["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "person: [0.10, 0.10, 0.30, 0.60]" in messages[-1]["content"] and check_turns(messages[2]["content"])

    again = LLMTeacher(make_client(server, tmp_path, monkeypatch))  # a rerun: same requests, new client
    assert again.conversation(items[0]["context"]) == turns
    assert len(server.requests) == 4 and again.client.cache_hits == 1  # served from disk, not the server

    cache_files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "cache") for f in fs]
    assert len(cache_files) == 1
    for path in cache_files:
        assert SECRET not in open(path).read() and SECRET not in path


def test_llm_teacher_rejects_bad_json_and_gives_up(server, tmp_path, monkeypatch):
    client = make_client(server, tmp_path, monkeypatch, max_retries=2)
    teacher = LLMTeacher(client)
    ctx = {"captions": ["A red circle."], "boxes": ["red circle: [0.10, 0.10, 0.40, 0.40]"]}
    server.script = [(200, "Sure! Here is a conversation: Q: ...", 0),
                     (200, json.dumps([{"from": "gpt", "value": "wrong order"}, {"from": "human", "value": "x"}]), 0),
                     (200, "```json\n" + GOOD_REPLY + "\n```", 0)]
    assert teacher.detail(ctx) is None and teacher.complex(ctx) is None
    assert teacher.conversation(ctx)[1]["value"] == "Two people and a dog."  # code fences are tolerated
    assert dict(teacher.rejected) == {"detail": 1, "complex": 1}
    assert len(server.requests) == 3

    server.script = [(500, "boom", 0)] * 3
    with pytest.raises(ChatError, match="gave up after 3 attempts"):
        client.chat([{"role": "user", "content": "fails"}])
    assert len(server.requests) == 6

    server.script = [(401, f"invalid key {SECRET}", 0)]  # not retried; the echoed key is redacted
    with pytest.raises(ChatError, match="HTTP 401") as err:
        client.chat([{"role": "user", "content": "unauthorised"}])
    assert SECRET not in str(err.value) and len(server.requests) == 7


def test_llm_client_retries_broken_replies_and_never_caches_them(server, tmp_path, monkeypatch):
    """A null, numeric or list content, a body that is not UTF-8 and a reply trickled a byte at a time (bounded by
    the timeout as a whole) are each retried and never cached; the good reply after them is."""
    client = make_client(server, tmp_path, monkeypatch, max_retries=5, timeout=1.0)
    good = json.dumps({"choices": [{"message": {"content": "fine"}}]}).encode()
    server.script = [(200, None, 0), (200, 42, 0), (200, ["a"], 0), ("raw", b"\xff\xfe{", 0),
                     ("trickle", good, 0), (200, "fine", 0)]
    start = time.monotonic()
    assert client.chat([{"role": "user", "content": "hi"}]) == "fine"
    assert len(server.requests) == 6 and time.monotonic() - start < 5      # the trickle was cut after ~1 s
    again = make_client(server, tmp_path, monkeypatch)
    assert again.chat([{"role": "user", "content": "hi"}]) == "fine" and again.cache_hits == 1
    # a cache file that holds no text (an older client's) is asked again, not returned
    path = next(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "cache") for f in fs)
    json.dump({"request": {}, "response": None}, open(path, "w"))
    server.script = [(200, "asked again", 0)]
    assert make_client(server, tmp_path, monkeypatch).chat([{"role": "user", "content": "hi"}]) == "asked again"


@pytest.mark.parametrize("status", [301, 302, 307])
def test_llm_client_never_follows_a_redirect_with_the_key(server, tmp_path, monkeypatch, status):
    """The request carries the API key and a POST body: a redirect to another host is an error naming where it
    pointed, never a request that takes the key there, nor a POST silently turned into a GET."""
    elsewhere = FakeServer()
    try:
        client = make_client(server, tmp_path, monkeypatch, max_retries=2)
        server.script = [(status, elsewhere.url.replace("127.0.0.1", "localhost") + "/chat/completions", 0)]
        with pytest.raises(ChatError, match=f"redirect \\(HTTP {status}\\) to http://localhost:.*not followed"):
            client.chat([{"role": "user", "content": "hi"}])
        assert elsewhere.requests == [] and len(server.requests) == 1
    finally:
        elsewhere.httpd.shutdown()
        elsewhere.httpd.server_close()


def test_short_answers_need_no_colour_words():
    objs = parse_objects(["dog: [0.05, 0.05, 0.20, 0.20]", "dog: [0.70, 0.70, 0.90, 0.90]"])
    assert [o["color"] for o in objs] == [None, None] and objs[0]["noun"] == "dog"
    qs = short_answer_questions(["dog: [0.05, 0.05, 0.20, 0.20]", "dog: [0.70, 0.70, 0.90, 0.90]"], ["dog", "cat"],
                                AnswerBalancer(random.Random(0)))
    assert {q["question_type"]: q["answer"] for q in qs}["count"] == "2"
    assert all(q["question_type"] != "position" for q in qs)  # two dogs: "Where is the dog?" would be ambiguous


def test_vqa_rounds_ask_more_questions_never_the_same_twice():
    items, vocab = load_coco(os.path.join(FIXTURES, "captions.json"), os.path.join(FIXTURES, "instances.json"))
    asked = {}
    for rounds in (1, 3):
        data = make_instruct_data(items, RuleTeacher(vocab), seed=0, vocabulary=vocab,
                                  balancer=AnswerBalancer(random.Random(0)), progress=False, vqa_rounds=rounds)
        turns = next(e for e in data if e["id"] == "7_vqa")["conversations"]
        questions = [t["value"].replace("<image>\n", "") for t in turns[::2]]
        assert len(questions) == len(set(questions)), questions          # no question twice about one image
        assert turns[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in turns[1:])
        asked[rounds] = questions
    assert set(asked[1]) < set(asked[3])                                  # round 1 is the same; later rounds add
    assert sum(q.startswith("How many objects") for q in asked[3]) == 1   # only one such question exists


def test_position_names_list_the_grid_row_by_row():
    from llava_mini.synth.teacher import POSITION_NAMES, position_name
    cells = [position_name((col + 0.5) / 3, (row + 0.5) / 3) for row in range(3) for col in range(3)]
    assert cells == list(POSITION_NAMES)


def test_fact_check_keeps_true_samples_and_names_the_false_claim():
    from llava_mini.synth.fact_check import fact_check, scene_of_context
    ctx = {"captions": ["A large red circle and a small blue square on a pale blue background."],
           "boxes": ["red circle: [0.05, 0.10, 0.40, 0.45]", "blue square: [0.60, 0.62, 0.82, 0.84]"]}
    scene = scene_of_context(ctx)
    assert scene["background"] == "pale blue" and scene["objects"][1] == {
        "color": "blue", "shape": "square", "bbox": [0.60, 0.62, 0.82, 0.84]}
    good = [{"from": "human", "value": "Where is the circle?"},
            {"from": "gpt", "value": "The red circle is at the top left, and there are two shapes."}]
    assert fact_check(good, ctx) is None
    for answer, why in [("There is a green triangle.", "false claim (object): a green triangle"),
                        ("The red circle is at the bottom right.",
                         "false claim (position): red circle at the bottom right"),
                        ("I see three shapes.", "false claim (count): 3 x object")]:
        assert fact_check([good[0], {"from": "gpt", "value": answer}], ctx) == why
    assert fact_check([{"from": "human", "value": "Is there a green triangle?"}, good[1]], ctx) is None  # questions


def test_llm_teacher_with_a_check_rejects_false_samples_and_says_why():
    from llava_mini.synth.fact_check import fact_check

    class Client:                                   # replies in turn: a true sample, a false one, not JSON
        replies = [json.dumps([{"from": "human", "value": "What is there?"}, {"from": "gpt", "value": v}])
                   for v in ("A red circle.", "A blue star.")] + ["Sure! Here you go."]

        def chat(self, messages, temperature=0.0):
            return self.replies.pop(0)
    ctx = {"captions": ["A red circle on a white background."], "boxes": ["red circle: [0.10, 0.10, 0.40, 0.40]"]}
    teacher = LLMTeacher(Client(), check=fact_check)
    assert teacher.conversation(ctx)[1]["value"] == "A red circle."
    assert teacher.detail(ctx) is None and teacher.complex(ctx) is None
    assert dict(teacher.rejected) == {"detail": 1, "complex": 1}
    assert dict(teacher.reasons) == {"false claim (object)": 1, "not a JSON list of alternating human/gpt turns": 1}
    assert teacher.examples["false claim (object)"][2] == "false claim (object): a blue star"


def test_the_lines_reply_format_for_small_models():
    from llava_mini.synth.llm_teacher import check_lines
    assert check_lines("Sure!\nQ: What is there?\nA: A red circle.\nQ: Where?\nA: Top left.\nQ: And") == [
        {"from": "human", "value": "What is there?"}, {"from": "gpt", "value": "A red circle."},
        {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "Top left."}]
    assert check_lines("Q: one?\nQ: two?\nA: yes") is None and check_lines("no lines at all") is None

    class Client:
        def chat(self, messages, temperature=0.0):
            self.messages = messages
            return "Q: Describe the image.\nA: A red circle on white."
    client = Client()
    teacher = LLMTeacher(client, reply_format="lines")
    turns = teacher.detail({"captions": ["A red circle."], "boxes": ["red circle: [0.10, 0.10, 0.40, 0.40]"]})
    assert turns == [{"from": "human", "value": "<image>\nDescribe the image."},
                     {"from": "gpt", "value": "A red circle on white."}]
    assert client.messages[2]["content"].startswith("Q: Describe the image in detail.\nA: ")   # the example, in lines
    assert '"Q: "' in client.messages[0]["content"] and "JSON" not in client.messages[0]["content"]
    with pytest.raises(ValueError, match="reply_format"):
        LLMTeacher(client, reply_format="yaml")


def test_the_world_command_runs_an_llm_teacher_and_reports_what_it_rejected(server, tmp_path, capsys):
    # One scene, three kinds: a sample with a false count, a true one (no checkable claim), one out of format.
    server.script = [(200, "Q: How many objects are there?\nA: I see twenty objects.", 0),
                     (200, "Q: Describe the image.\nA: It is a small picture.", 0),
                     (200, "Sure! Here is a description.", 0)]
    out = tmp_path / "world"
    world.main(["--out", str(out), "--train", "2", "--test", "1", "--llm-teacher", server.url,
                "--llm-model", "fake", "--llm-scenes", "1", "--llm-reply-format", "lines"])
    kept = json.loads((out / "llm_teacher.json").read_text())
    scene = json.loads((out / "scenes_train.json").read_text())[0]
    assert [s["id"] for s in kept] == [f"{scene['id']}_llm_detail"] and kept[0]["image"] == scene["image"]
    report = json.loads((out / "llm_teacher_report.json").read_text())
    assert (report["asked"], report["written"]) == (3, 1)
    assert report["rejected"] == {"conversation": 1, "complex": 1}
    assert set(report["reasons"]) == {"false claim (count)", "no Q:/A: lines in turn"}
    assert scene["captions"][0] in server.requests[0]["body"]["messages"][-1]["content"]   # the scene, in words
    printed = capsys.readouterr().out
    assert "1 of 3 samples written, 2 rejected" in printed and "rejected 1x: false claim (count)" in printed
