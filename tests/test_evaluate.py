"""Evaluation: the scoring layer on hand-made fixtures with known answers, the judges (rule judge on a scene,
LLM judge against a fake OpenAI-compatible server), ScienceQA letter scoring, and one run through a real model."""
import http.server
import json
import os
import threading

import pytest
from conftest import load_script

from llava_mini.eval import evaluate as ev
from llava_mini.eval import judges, scoring
from llava_mini.eval.describe import description_score, description_summary
from llava_mini.loading import model_folder
from llava_mini.synth import claims as claim_parser

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

SCENE = {"id": "s0", "background": "pale blue", "objects": [
    {"shape": "circle", "color": "red", "size": "small", "bbox": [0.05, 0.05, 0.30, 0.30]},
    {"shape": "circle", "color": "red", "size": "large", "bbox": [0.60, 0.10, 0.95, 0.45]},
    {"shape": "square", "color": "blue", "size": "small", "bbox": [0.10, 0.70, 0.30, 0.90]},
]}


def test_normalize_answer():
    assert scoring.normalize_answer("The Two.") == "2"
    assert scoring.normalize_answer("  a Red   circle! ") == "red circle"
    assert scoring.normalize_answer("Yes") == "yes"
    assert scoring.normalize_answer("don't know") == "dont know"
    assert scoring.normalize_answer("3") == scoring.normalize_answer("three")


def test_answer_confusion_counts_the_replies_to_each_right_answer():
    qs = [{"answer": "top left", "question_type": "position"}, {"answer": "top left", "question_type": "position"},
          {"answer": "Top Left", "question_type": "position"}, {"answer": "right", "question_type": "position"},
          {"answer": "red", "question_type": "color"}]
    table = scoring.answer_confusion(qs, ["top", "Top.", "top left", "", "blue"], "position")
    assert table == {"right": {"": 1}, "top left": {"top": 2, "top left": 1}}     # normalised; other types left out
    assert table["top left"].most_common(1) == [("top", 2)]


def test_vqa_accuracy_per_type():
    questions = [{"answer": "2", "question_type": "count"}, {"answer": "3", "question_type": "count"},
                 {"answer": "red", "question_type": "color"}, {"answer": "yes", "question_type": "exists"}]
    predictions = ["Two.", "four", "The red", "no"]
    acc = scoring.vqa_accuracy(questions, predictions)
    assert acc["overall"] == pytest.approx(0.5)
    assert acc["per_type"] == {"color": 1.0, "count": 0.5, "exists": 0.0}
    assert acc["count_per_type"] == {"color": 1, "count": 2, "exists": 1}
    # off type: no question of the type has that answer ("4" and "no" are answers of no question here)
    assert acc["off_type_per_type"] == {"color": 0.0, "count": 0.5, "exists": 1.0}


def test_off_type_replies_are_no_answer_of_their_questions_type():
    """A reply that answers another kind of question ("triangle" to a position question) is off type; a wrong reply
    of the right kind ("left" for "top left") is not. Counted per type and per phrasing split."""
    questions = [{"answer": "top left", "question_type": "position", "phrasing": "seen"},
                 {"answer": "left", "question_type": "position", "phrasing": "heldout"},
                 {"answer": "red", "question_type": "color", "phrasing": "heldout"},
                 {"answer": "blue", "question_type": "color", "phrasing": "seen"}]
    acc = scoring.vqa_accuracy(questions, ["Left.", "triangle", "top left", "red"])
    assert acc["off_type_per_type"] == {"color": 0.5, "position": 0.5}    # "top left" is a place, not a colour
    assert acc["off_type_per_phrasing"] == {"heldout": 1.0, "seen": 0.0}
    assert acc["off_type"] == pytest.approx(0.5)
    assert acc["overall"] == pytest.approx(0.0)


def test_the_short_answer_a_chat_reply_states():
    """scoring.answer_in_sentence reads the answer of the asked type out of a sentence; a reply that states none, or
    two, stays as it is, so it scores wrong (and off type when it answers another kind of question)."""
    read = scoring.answer_in_sentence
    assert read("count_color", "There are two red objects in the image.") == "2"
    assert read("count_shape", "There are no stars in the image.") == "0"
    assert read("color", "The star is blue.") == "blue" and read("color", "The star is grey.") == "gray"
    assert read("shape", "It is an orange triangle.") == read("shape", "I see two triangles.") == "triangle"
    assert read("position", "The red star is at the top left of the image.") == "top left"     # not "top"
    assert read("position", "The red star is in the center of the image.") == "center"
    assert read("exists", "No, there is no red star in the image.") == "no"
    assert read("color", "The star is blue and the circle is red.") == "star is blue and circle is red"
    assert read("shape", "circle black, square blue.") == "circle black square blue"      # the inventory's form
    assert read("exists", "The red star is at the top.") == "red star is at top"
    with pytest.raises(ValueError, match="'bench'"):
        read("bench", "It is.")
    qs = [{"answer": "blue", "question_type": "color"}, {"answer": "2", "question_type": "count"}]
    stated = [read(q["question_type"], r) for q, r in zip(qs, ["The star is blue.", "There is a star at the top."])]
    acc = scoring.vqa_accuracy(qs, stated)
    assert acc["per_type"] == {"color": 1.0, "count": 0.0} and acc["off_type_per_type"]["count"] == 1.0


def test_lookup_accuracy_counts_only_questions_with_a_choice_and_says_the_picking_rate():
    """A colour question about a scene of one colour is no look-up; with 2 (or 4) colours to pick from, a model that
    cannot find the asked object scores 1/2 (1/4). Questions without "choices" (counts, easy-VQA) are left out."""
    questions = [{"answer": "red", "question_type": "color", "choices": 1},
                 {"answer": "red", "question_type": "color", "choices": 2},
                 {"answer": "blue", "question_type": "color", "choices": 4},
                 {"answer": "star", "question_type": "shape", "choices": 2},
                 {"answer": "3", "question_type": "count"}]
    acc = scoring.vqa_accuracy(questions, ["red", "Red.", "red", "circle", "3"])
    lookup = acc["lookup"]
    assert lookup["n"] == 3 and lookup["accuracy"] == pytest.approx(1 / 3)
    assert lookup["chance"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 2) / 3)
    assert lookup["per_type"]["color"] == {"accuracy": 0.5, "chance": pytest.approx(3 / 8), "n": 2}
    assert lookup["per_type"]["shape"]["accuracy"] == 0.0
    assert "lookup" not in scoring.vqa_accuracy(questions[-1:], ["3"])     # nothing says how many choices


def test_vqa_accuracy_rejects_mismatched_lengths():
    questions = [{"answer": "2", "question_type": "count"}, {"answer": "3", "question_type": "count"}]
    with pytest.raises(ValueError, match="2 questions but 1 predictions"):
        scoring.vqa_accuracy(questions[:2], ["2"])


def test_relative_scores_arithmetic():
    records = [{"category": "conv", "score_reference": 8, "score_model": 6},
               {"category": "conv", "score_reference": 10, "score_model": 9},
               {"category": "detail", "score_reference": 5, "score_model": 5}]
    s = judges.relative_scores(records)
    assert s["conv"]["relative"] == pytest.approx(100 * 7.5 / 9)
    assert s["detail"]["relative"] == pytest.approx(100.0)
    assert s["overall"]["relative"] == pytest.approx(100 * (20 / 3) / (23 / 3))
    assert s["overall"]["n"] == 3 and "complex" not in s


def test_claims_are_parsed_and_checked_against_the_scene():
    found = claim_parser.extract_claims("There are two red circles and a blue square at the bottom left. No stars.")
    assert claim_parser.Claim("count", "red", "circle", number=2) in found
    assert claim_parser.Claim("position", "blue", "square", where="bottom left") in found
    assert claim_parser.Claim("count", None, "star", number=0) in found
    assert all(claim_parser.check_claim(c, SCENE) for c in found)
    wrong = claim_parser.extract_claims("There are three shapes: a green triangle on the right.")
    assert {c.kind: claim_parser.check_claim(c, SCENE) for c in wrong} == {"count": True, "object": False, "position": False}
    assert claim_parser.check_claim(claim_parser.Claim("color", "blue"), {"background": "pale blue", "objects": []})
    # Arithmetic about an imagined scene is not a claim about this one.
    assert claim_parser.extract_claims("Adding one more makes 2 + 1 = 3 red circles, so one object would be left.") == set()


def test_rule_judge_knows_the_worlds_words():
    world = pytest.importorskip("llava_mini.synth.world")
    assert set(world.COLORS) <= claim_parser.COLOR_WORDS and set(world.SHAPES) <= claim_parser.SHAPE_WORDS


def test_rule_judge_prefers_true_answers():
    item = {"id": "s0_detail", "category": "detail", "question": "Describe the image.", "scene": SCENE,
            "reference": "Two red circles at the top and a small blue square at the bottom left."}
    judge = judges.RuleJudge()
    ref, good = judge.score(item, "There are two red circles and a blue square.")
    _, wrong = judge.score(item, "There is one green triangle in the middle.")
    _, vague = judge.score(item, "It is a nice picture.")
    assert ref == pytest.approx(10.0)
    assert 5 < good < 10 and wrong == pytest.approx(1.0) and 1.0 <= vague <= 5.0
    assert good > vague > wrong - 1e-9
    with pytest.raises(ValueError, match="no 'scene'"):      # a bad item is an error, not a "judge failure"
        judges.score_bench([{"id": "x", "category": "conv", "question": "q", "reference": "r"}], ["a"], judge)


def test_parse_judge_scores():
    assert judges.parse_judge_scores("8 6\nBecause...") == (8.0, 6.0)
    assert judges.parse_judge_scores("7.5, 9") == (7.5, 9.0)
    with pytest.raises(ValueError, match="two scores"):
        judges.parse_judge_scores("Assistant 1 is better.")


class _FakeOpenAI(http.server.BaseHTTPRequestHandler):
    """Scores by a rule we can predict: 9 for the reference, 3 for an answer containing 'wrong', else 6; one
    request gets a reply without scores, which must be counted as a judge failure."""
    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeOpenAI.requests.append(body)
        prompt = body["messages"][-1]["content"]
        model_answer = prompt.split("[Assistant 2]\n")[1].split("\n[End of Assistant 2]")[0]
        text = ("I cannot rate this." if model_answer == "unscorable" else
                f"9 {3 if 'wrong' in model_answer else 6}\nThe second answer is less precise.")
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_llm_judge_against_fake_server():
    from llava_mini.synth.llm_client import ChatClient
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ChatClient(f"http://127.0.0.1:{server.server_port}/v1", "judge", max_retries=0)
        items = [{"id": str(i), "category": c, "question": "What is there?", "reference": "Two red circles.",
                  "context": {"captions": ["Two red circles."], "boxes": ["red circle: [0.1, 0.1, 0.3, 0.3]"]}}
                 for i, c in enumerate(["conv", "conv", "complex", "detail"])]
        result = judges.score_bench(items, ["good", "wrong", "good", "unscorable"], judges.LLMJudge(client))
    finally:
        server.shutdown()
    scores = result["scores"]
    assert scores["conv"]["relative"] == pytest.approx(100 * 4.5 / 9)
    assert scores["complex"]["relative"] == pytest.approx(100 * 6 / 9)
    assert scores["overall"]["n"] == 3 and "detail" not in scores
    assert [f["id"] for f in result["judge_failures"]] == ["3"]
    prompt = _FakeOpenAI.requests[0]["messages"][-1]["content"]
    assert "[Context]\nCaptions:\nTwo red circles.\n\nObjects:\nred circle: [0.1, 0.1, 0.3, 0.3]" in prompt
    assert _FakeOpenAI.requests[0]["temperature"] == 0


def test_parse_letter_like_llava():
    assert scoring.parse_letter("B", "ABC") == "B"
    assert scoring.parse_letter("B. dog", "ABC") == "B"
    assert scoring.parse_letter("Because ... The answer is C.", "ABC") == "C"
    assert scoring.parse_letter("The answer is D.", "ABC") is None          # not an option
    assert scoring.parse_letter("The answer is A. The answer is B.", "ABC") is None
    assert scoring.parse_letter("dog", "ABC") is None
    assert scoring.parse_letter("AB", "ABC") is None and scoring.parse_letter("", "ABC") is None   # not one option


def test_scienceqa_fixture_scores():
    samples = scoring.read_scienceqa(os.path.join(FIXTURES, "scienceqa", "test.json"))
    assert [s["answer"] for s in samples] == ["A", "B", "B", "B", "A", "B"]
    assert [s["options"] for s in samples] == ["ABC", "AB", "AB", "ABCD", "ABC", "ABC"]
    assert sum(bool(s["image"]) for s in samples) == 3
    # Right on 1 (image), 2, 4; wrong on 3 (image), 5 (image, unparsable), 6.
    predictions = ["A", "The answer is B.", "A", "B. iron", "blue", "C"]
    acc = scoring.scienceqa_accuracy(samples, predictions)
    assert acc["accuracy"] == pytest.approx(3 / 6) and acc["image_accuracy"] == pytest.approx(1 / 3)
    assert acc["n"] == 6 and acc["n_image"] == 3 and acc["unparsed"] == 1


def test_description_score_on_a_scene_with_known_objects():
    """SCENE: two red circles (top left, top right) and a blue square (bottom left)."""
    full = description_score("Two red circles and a small blue square on a pale blue background.", SCENE)
    assert (full["recall"], full["precision"], full["all_named"], full["exact"]) == (1.0, 1.0, True, True)
    half = description_score("A red circle and a green star.", SCENE)          # one right, one invented
    assert (half["recall"], half["precision"], half["all_named"]) == (0.5, 0.5, False)
    extra = description_score("Red circles, a blue square and a yellow star.", SCENE)
    assert extra["all_named"] and not extra["exact"] and extra["precision"] == pytest.approx(2 / 3)
    placed = description_score("The blue square is at the bottom left.", SCENE)
    wrong = description_score("The blue square is at the top right.", SCENE)
    assert (placed["positions"], placed["positions_true"]) == (1, 1) and (wrong["positions"], wrong["positions_true"]) == (1, 0)
    word = description_score("3", SCENE)                                      # a count is not a description
    assert (word["named"], word["recall"], word["precision"], word["all_named"]) == (0, 0.0, 0.0, False)
    summary = description_summary([full, half, word, placed, wrong])
    assert summary["n"] == 5 and summary["all_named"] == pytest.approx(1 / 5)
    assert summary["recall"] == pytest.approx((1 + 0.5 + 0 + 0.5 + 0.5) / 5)
    assert summary["position_accuracy"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        description_summary([])


def test_real_model_path_batched_equals_one_by_one_and_cli(tmp_path, monkeypatch):
    """Through a tiny random model: batching (right padding, mixed lengths) must not change any answer; then the
    command line writes a full report (VQA + baselines, bench with the rule judge, ScienceQA fixture)."""
    from PIL import Image
    from test_chat import make_tiny_checkpoint
    model_dir = make_tiny_checkpoint(str(tmp_path / "ckpt"), context=320)   # room for a description and a question
    model, tokenizer, template = model_folder.load_checkpoint(model_dir)
    data = tmp_path / "shapes"
    (data / "images").mkdir(parents=True)
    colours = [(220, 40, 40), (40, 80, 220), (40, 170, 60)]
    for i, c in enumerate(colours):
        Image.new("RGB", (32, 32), c).save(data / "images" / f"{i}.png")
    questions = [{"id": str(i), "image": f"images/{i % 3}.png", "question": q, "answer": "red",
                  "question_type": t} for i, (q, t) in enumerate(
        [("What colour is it?", "color"), ("How many shapes are there in the picture?", "count"),
         ("Is there a circle?", "exists"), ("What shape is the red one on the left?", "shape")])]
    one_by_one = ev.evaluate_vqa(model, tokenizer, questions, str(data), template=template, batch_size=1,
                                 max_new_tokens=6)
    batched = ev.evaluate_vqa(model, tokenizer, questions, str(data), template=template, batch_size=4,
                              max_new_tokens=6)
    preds = [p["prediction"] for p in batched["predictions"]]
    assert preds == [p["prediction"] for p in one_by_one["predictions"]]
    assert batched["overall"] == pytest.approx(sum(scoring.normalize_answer(p) == "red" for p in preds) / 4)
    with ev.zeroed_projector(model):
        blank = ev.generate_answers(model, tokenizer, ["What colour is it?"] * 2, [Image.open(data / "images" / "0.png"),
                                    Image.open(data / "images" / "1.png")], template=template)
    assert blank[0] == blank[1]            # with the projector zeroed, the image cannot change the answer
    # blind: every question sees the same blank image, which is all zeros after normalisation
    same_text = [dict(q, question="What colour is it?") for q in questions[:3]]        # three different images
    blind = ev.evaluate_vqa(model, tokenizer, same_text, str(data), template=template, blind=True, max_new_tokens=6)
    assert len({p["prediction"] for p in blind["predictions"]}) == 1
    from llava_mini.data.images import preprocess_image
    assert preprocess_image(ev.blank_image(model.config.vision_config), model.config.vision_config).abs().max() < 0.02

    ev.write_json(questions, str(data / "test.json"))
    scene = dict(SCENE, image="images/0.png")
    ev.write_json([{"id": f"b{c}", "image": "images/0.png", "category": c, "question": "Describe the image.",
                    "reference": "Two red circles and a blue square.", "context": {"captions": [], "boxes": []},
                    "scene": scene} for c in judges.CATEGORIES], str(data / "bench.json"))
    ev.write_json([dict(scene, id="s0", captions=["Two red circles and a blue square."])], str(data / "scenes_test.json"))
    out = tmp_path / "report.json"
    report = ev.main(["--model", model_dir, "--data", str(data), "--bench", "--bench-max-new-tokens", "8", "--describe",
                      "--no-projector-baseline", "--chat",
                      "--scienceqa", os.path.join(FIXTURES, "scienceqa", "test.json"), "--out", str(out)])
    saved = json.load(open(out))
    assert set(saved["shapes"]) == {"model", "blind", "no projector", "chat"}
    # --chat: the bare question, as chat.py asks it; the short answer is the one the reply states
    chat = saved["shapes"]["chat"]["predictions"]
    bare = ev.generate_answers(model, tokenizer, [q["question"] for q in questions],
                               [Image.open(data / q["image"]) for q in questions], template=template, max_new_tokens=48)
    assert [p["reply"] for p in chat] == bare
    assert [p["prediction"] for p in chat] == [scoring.answer_in_sentence(q["question_type"], r)
                                              for q, r in zip(questions, bare)]
    saved_preds = [p["prediction"] for p in saved["shapes"]["model"]["predictions"]]
    assert saved["shapes"]["model"]["overall"] == pytest.approx(scoring.vqa_accuracy(questions, saved_preds)["overall"])
    assert set(saved["bench"]["scores"]) == {"conv", "detail", "complex", "overall"}
    described = saved["describe"]["descriptions"][0]
    assert saved["describe"]["n"] == 1 and described["recall"] == description_score(described["answer"], scene)["recall"]
    assert saved["scienceqa"]["n"] == 6 and saved["scienceqa"]["n_image"] == 3
    assert report["template"] == template
    # The follow-ups: the questions about the described image (0.png: questions 0 and 3), each asked after the
    # description, batched as one by one; the same questions asked first are scored from the VQA run's answers.
    followups = saved["followups"]
    assert [p["id"] for p in followups["predictions"]] == ["0", "3"]
    chats = [["Describe the image.", described["answer"], questions[i]["question"] + ev.SHORT_ANSWER_PROMPT]
             for i in (0, 3)]
    alone = [ev.generate_answers(model, tokenizer, [c], [Image.open(data / "images" / "0.png")], template=template)[0]
             for c in chats]
    assert [p["prediction"] for p in followups["predictions"]] == alone
    assert followups["asked_first"]["overall"] == pytest.approx(
        scoring.vqa_accuracy([questions[0], questions[3]], [saved_preds[0], saved_preds[3]])["overall"])
    # ... and the bench's open questions about that image, conv and complex (not "describe" again), likewise
    later = saved["bench_after_description"]
    assert [r["category"] for r in later["records"]] == ["conv", "complex"]
    assert [r["answer"] for r in later["records"]] == [ev.generate_answers(
        model, tokenizer, [["Describe the image.", described["answer"], "Describe the image."]],
        [Image.open(data / "images" / "0.png")], template=template, max_new_tokens=8)[0]] * 2
    with pytest.raises(ValueError, match="no question is about a described image"):
        ev.evaluate_followups(model, tokenizer, questions[1:3], {"images/0.png": "A red circle."}, str(data),
                              template=template)

    # The LLM judge's endpoint is down: the VQA scores already measured are written, and the exit says why.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"          # nothing listens there once closed
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    import time
    from types import SimpleNamespace

    from llava_mini.synth import llm_client
    monkeypatch.setattr(llm_client, "time", SimpleNamespace(monotonic=time.monotonic, sleep=lambda s: None))  # no backoff
    with pytest.raises(SystemExit) as stop:
        ev.main(["--model", model_dir, "--data", str(data), "--bench", "--bench-max-new-tokens", "4", "--judge",
                 "openai", "--judge-url", dead, "--out", str(out)])
    assert stop.value.code == 1
    saved = json.load(open(out))
    assert "overall" in saved["shapes"]["model"] and "gave up" in saved["bench"]["error"]


def test_probe_answer_reads_the_answer_position_of_each_question(tmp_path):
    """benchmarks/probe_answer.py: the hidden state it takes after the last layer, put through the final norm and the
    vocabulary projection, is exactly the model's next-token logits for that prompt; batching (right padding, mixed
    lengths) changes nothing; the train questions are the short-answer turns, bare."""

    import torch
    from PIL import Image
    from test_chat import make_tiny_checkpoint

    from llava_mini.data.conversation import SHORT_ANSWER_PROMPT, tokenize_prompt
    from llava_mini.data.images import load_image, preprocess_image
    probe = load_script("benchmarks/probe_answer.py")
    model, tokenizer, template = model_folder.load_checkpoint(make_tiny_checkpoint(str(tmp_path / "ckpt")))
    (tmp_path / "images").mkdir()
    for i, c in enumerate([(220, 40, 40), (40, 80, 220)]):
        Image.new("RGB", (32, 32), c).save(tmp_path / "images" / f"{i}.png")
    questions = [{"image": f"images/{i % 2}.png", "question": q, "answer": "red"}
                 for i, q in enumerate(["What colour is it?", "Where is the small blue star?", "Is there a circle?"])]
    states = probe.answer_states(model, tokenizer, questions, str(tmp_path), template, batch_size=2)
    layers = len(model.language_model.model.layers)
    assert states.shape == (3, layers, model.config.text_config.hidden_size)
    assert torch.allclose(states, probe.answer_states(model, tokenizer, questions, str(tmp_path), template,
                                                      batch_size=1), atol=1e-5)
    q = questions[1]
    ids = tokenize_prompt(tokenizer, ["<image>\n" + q["question"] + SHORT_ANSWER_PROMPT], template)
    pixels = preprocess_image(load_image(str(tmp_path / q["image"])), model.config.vision_config)[None]
    with torch.no_grad():
        logits = model(torch.tensor([ids]), pixels, torch.ones(1, len(ids), dtype=torch.long)).logits[0, -1]
        from_state = model.language_model.lm_head(model.language_model.model.norm(states[1, -1]))
    assert torch.allclose(from_state, logits, atol=1e-4)
    sample = {"id": "s_vqa", "image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhere is the red star?" + SHORT_ANSWER_PROMPT},
        {"from": "gpt", "value": "top left"}, {"from": "human", "value": "How many stars are there?"},
        {"from": "gpt", "value": "1"}]}
    assert probe.train_questions([sample, dict(sample, id="s_conv")]) == [
        {"image": "x.png", "question": "Where is the red star?", "answer": "top left"},
        {"image": "x.png", "question": "How many stars are there?", "answer": "1"}]
    assert [probe.kind_of(a) for a in ("top left", "star", "teal", "1", "yes")] == ["position", "shape", "color",
                                                                                      None, None]


def test_probe_lookup_scenes_questions_and_rates():
    """benchmarks/probe_lookup.py: every scene has distinct colours and shapes, each question is a seen phrasing of
    the world asking about one of its objects, and the three rates come out right on hand-made answers."""
    import random

    from llava_mini.synth.phrasings import question_parser
    from llava_mini.synth.world import WorldConfig, vocabulary
    probe = load_script("benchmarks/probe_lookup.py")
    parse = question_parser(vocabulary(WorldConfig()))
    items = probe.lookup_items(200, random.Random(0), objects=(2, 4))
    for it in items:
        names = it["scene"].split(": ", 1)[1].rstrip(".").replace(" and ", ", ").split(", ")
        colors, shapes = [n.split()[1] for n in names], [n.split()[2] for n in names]
        assert 2 <= len(names) <= 4 and len(set(colors)) == len(colors) and len(set(shapes)) == len(shapes)
        kind, split, fields = parse(it["question"])
        assert split == "seen" and it["answer"] in it["options"]
        assert (kind, it["options"]) in (("color", colors), ("shape", shapes))
        asked = fields.get("noun") or fields.get("color")
        assert (shapes if kind == "color" else colors).index(asked) == it["options"].index(it["answer"])
    assert {p["question"].split()[0] for p in items} >= {"What", "Which"}
    two = [{"answer": "red", "options": ["red", "blue"]}, {"answer": "star", "options": ["star", "circle", "square"]}]
    rates = probe.score(two, [" Red.", "circle"])
    assert rates == {"right": 0.5, "in_scene": 1.0, "chance_in_scene": (1 / 2 + 1 / 3) / 2, "n": 2}
    assert probe.score(two, ["green", "star"])["in_scene"] == 0.5


def test_probe_lookup_trains_the_same_in_transformers():
    """--from-scratch --reference: two steps of the look-up in transformers' LlamaForCausalLM, from the same initial
    weights and batches, end at the weights our LLaMA reaches (the backward pass and tied embeddings agree). And the
    shipped tiny LLaMA, probed, answers with an attribute of the scene it was given, asked or continuing a listing."""
    import random

    import torch

    from llava_mini.data.tokenizer import Tokenizer
    from llava_mini.loading import weights
    probe = load_script("benchmarks/probe_lookup.py")
    tok = Tokenizer.from_file(os.path.join(probe.SHIPPED, "tokenizer.json"))
    ours = probe.train_from_scratch(tok, 2, batch_size=4, init_std=0.1)
    ref = probe.train_from_scratch(tok, 2, batch_size=4, init_std=0.1, reference=True)
    start = probe.train_from_scratch(tok, 0, batch_size=4, init_std=0.1).state_dict()
    for name, w in ours.state_dict().items():
        assert torch.allclose(w, ref.state_dict()[name], atol=1e-5), name
    assert any(not torch.equal(w, start[n]) for n, w in ours.state_dict().items())
    llm = weights.load_llama(probe.SHIPPED)
    shipped = probe.probe(llm, tok, probe.lookup_items(40, random.Random(1)))
    assert shipped["n"] == 40 and shipped["in_scene"] >= 0.9
    copying = probe.induction_items(40, random.Random(2))
    for it in copying:           # the colour that ends the prefix is the answer's colour in the first listing
        first, second = it["prefix"].split(". ", 1)
        assert f"{second.split()[-1]} {it['answer']}" in first and it["answer"] in it["options"]
    assert probe.probe_induction(llm, tok, copying)["in_scene"] >= 0.9


def test_questions_about_missing_objects_and_how_they_are_scored():
    """Each scene gets "Where is the X?" about an object it does not have and about one it has (the only one of its
    name); an answer that says there is none is read by the rule judge's parser, and the shares come out right."""
    import random

    from llava_mini.eval.missing import denies, missing_object_questions, missing_summary
    from llava_mini.synth import world
    cfg = world.WorldConfig()
    rng = random.Random(0)
    scenes = [world.sample_scene(rng, cfg, f"s{i}", f"s{i}.png") for i in range(60)]
    questions = missing_object_questions(scenes, world.vocabulary(cfg))
    by_image = {s["image"]: s for s in scenes}
    absent = [q for q in questions if not q["present"]]
    assert len(absent) == len(scenes) and questions == missing_object_questions(scenes, world.vocabulary(cfg))
    hard = 0
    for q in questions:
        names = [f"{o['color']} {o['shape']}" for o in by_image[q["image"]]["objects"]]
        assert q["question"] == f"Where is the {q['name']}?"
        assert (names.count(q["name"]) == 1) if q["present"] else (q["name"] not in names)
        color, shape = q["name"].split()
        assert q["hard"] == (not q["present"] and any(color in n.split() or shape in n.split() for n in names))
        hard += q["hard"]
    assert 10 < hard < len(absent)                 # hard cases and easy ones both
    assert denies("There is no red circle in the image.", "red circle")
    assert denies("No, there are no circles here.", "red circle")          # no circle at all: no red one either
    assert not denies("The red circle is at the left of the image.", "red circle")
    assert not denies("There is no blue circle in the image.", "red circle")   # another object denied
    qs = [{"name": "red circle", "present": False, "hard": True}, {"name": "blue star", "present": False, "hard": False},
          {"name": "green square", "present": True, "hard": False}]
    summary = missing_summary(qs, ["There is no red circle in the image.", "The blue star is at the top.",
                                   "There is no green square in the image."])
    assert summary == {"absent_denied": 0.5, "absent_hard_denied": 1.0, "present_denied": 1.0, "n_absent": 2,
                       "n_present": 1}


def test_questions_about_one_attribute_and_how_they_are_scored():
    """Per scene one presence question in a seen wording and one in a held-out wording; yes/no is read from the
    first word or, without one, from the counts; the largest object from the first object named."""
    import random

    from llava_mini.eval.missing import presence_questions, presence_right, presence_summary
    from llava_mini.synth import world
    from llava_mini.synth.phrasings import question_parser
    cfg = world.WorldConfig()
    rng = random.Random(0)
    scenes = [world.sample_scene(rng, cfg, f"s{i}", f"s{i}.png") for i in range(60)]
    questions = presence_questions(scenes, world.vocabulary(cfg))
    parse = question_parser(world.vocabulary(cfg))
    assert [q["phrasing"] for q in questions] == ["seen", "heldout"] * len(scenes)
    assert all(parse(q["question"])[1] == q["phrasing"] for q in questions)
    assert {q["truth"].split()[0] for q in questions} == {"Yes,", "No,", "The"}
    assert presence_right("Yes, there is a star in the image.", "Yes, there are two stars in the image.")
    assert presence_right("There are two stars in the image.", "Yes, there are two stars in the image.")
    assert presence_right("There are no stars in the image.", "No, there is no star in the image.")
    assert not presence_right("No, there is no white star in the image.", "Yes, there is a star in the image.")
    assert not presence_right("The blue star is at the top.", "No, there is no star in the image.")    # no answer
    assert presence_right("The largest object is the red circle, covering 20%.", "The largest object is the red circle.")
    assert not presence_right("A red square and a red circle.", "The largest object is the red circle.")
    qs = [{"truth": "Yes, there is a red star in the image.", "phrasing": "seen"},
          {"truth": "No, there is no red object in the image.", "phrasing": "heldout"},
          {"truth": "The largest object is the red circle.", "phrasing": "heldout"}]
    summary = presence_summary(qs, ["Yes.", "Yes, there is a red star.", "The largest object is the red circle."])
    assert summary["right"] == 2 / 3 and summary["n"] == 3
    assert summary["per_phrasing"] == {"seen": {"right": 1.0, "n": 1}, "heldout": {"right": 0.5, "n": 2}}
    assert summary["per_truth"]["no"] == {"right": 0.0, "n": 1} and summary["per_truth"]["largest"]["right"] == 1.0
