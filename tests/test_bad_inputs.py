"""Every command line turns a bad input into one line `error: ...` that names the culprit, and a non-zero exit.

One table, CASES: the tool, its arguments, the exit code and a piece of text the message must hold (the flag, the file,
the key, the sample id). Each case runs the tool's main() in this process through cli.run, as `python TOOL ...` does,
and asserts: that exit code; exactly one line on stderr starting with "error:", holding the culprit; no traceback and no
"internal error" (an error we did not foresee); every input file byte-for-byte as before; no temporary file left.
"""
import contextlib
import io
import json
import os
import shutil
import struct
import zlib

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import load_script
from llava_mini import cli

TOOLS = {
    "train": lambda: load_script("train.py").main,
    "chat": lambda: load_script("chat.py").main,
    "serve": lambda: load_script("serve.py").main,
    "evaluate": lambda: __import__("llava_mini.eval.evaluate", fromlist=["main"]).main,
    "world": lambda: __import__("llava_mini.synth.world", fromlist=["main"]).main,
    "coco": lambda: __import__("llava_mini.synth.coco", fromlist=["main"]).main,
    "text_qa": lambda: __import__("llava_mini.eval.text_qa", fromlist=["main"]).main,
    "attention_map": lambda: __import__("llava_mini.eval.attention_map", fromlist=["main"]).main,
    "make_tiny": lambda: load_script("weights/make_tiny.py").main,
    "convert_gguf": lambda: load_script("weights/convert_gguf.py").main,
    "download": lambda: load_script("weights/download.py").main,
    "report_table": lambda: load_script("docs/report_table.py").main,
}

STAGE2 = ["--stage", "2", "--image-root", "{root}", "--init", "{ckpt}", "--out", "{root}/out", "--quiet"]

# (tool, arguments ({root}, {ckpt}: the fixture's folder and tiny checkpoint), exit code, the culprit in the message)
CASES = [
    # train.py: flags
    ("train", ["--epochs", "0"], 2, "--epochs"),
    ("train", ["--epochs", "-1"], 2, "--epochs"),
    ("train", ["--epochs", "inf"], 2, "--epochs"),
    ("train", ["--lr", "nan"], 2, "--lr"),
    ("train", ["--lr", "fast"], 2, "--lr"),
    ("train", ["--batch-size", "0"], 2, "--batch-size"),
    ("train", ["--micro-batch-size", "-2"], 2, "--micro-batch-size"),
    ("train", ["--max-steps", "0"], 2, "--max-steps"),
    ("train", ["--max-length", "1.5"], 2, "--max-length"),
    ("train", ["--warmup-ratio", "1.5"], 2, "--warmup-ratio"),
    ("train", ["--weight-decay", "-0.1"], 2, "--weight-decay"),
    ("train", ["--max-grad-norm", "0"], 2, "--max-grad-norm"),
    ("train", ["--save-every", "-1"], 2, "--save-every"),
    ("train", ["--threads", "0"], 2, "--threads"),
    ("train", ["--processes", "0"], 2, "--processes"),
    ("train", ["--clip-steps", "0"], 2, "--clip-steps"),
    ("train", ["--stage", "3"], 2, "--stage"),
    ("train", ["--preset", "huge"], 2, "--preset"),
    ("train", ["--stage", "1", "--out", "x"], 2, "--data"),
    ("train", ["--stage", "2", "--data", "a.json", "--image-root", "r", "--out", "o"], 2, "--init"),
    # train.py: files
    ("train", [*STAGE2, "--data", "{root}/missing.json"], 1, "missing.json"),
    ("train", [*STAGE2, "--data", "{root}/bad.json"], 1, "bad.json: not valid JSON"),
    ("train", [*STAGE2, "--data", "{root}/latin1.json"], 1, "latin1.json: not UTF-8"),
    ("train", [*STAGE2, "--data", "{root}/object.json"], 1, "expected a JSON list"),
    ("train", [*STAGE2, "--data", "{root}/bad.jsonl"], 1, "bad.jsonl:2"),
    ("train", [*STAGE2, "--data", "{root}/latin1.jsonl"], 1, "latin1.jsonl:2: not UTF-8"),
    ("train", [*STAGE2, "--data", "{root}/escape.json"], 1, "points outside"),
    ("train", [*STAGE2, "--data", "{root}/turns.json"], 1, "sample s-turns"),
    ("train", [*STAGE2, "--data", "{root}/noimage.json"], 1, "nowhere.png"),
    ("train", [*STAGE2, "--data", "{root}/data.json", "--init", "{root}/nothing"], 1, "nothing"),
    ("train", [*STAGE2, "--data", "{root}/data.json", "--init", "{root}/ckpt_type"], 1, "'hidden_size' must be int"),
    ("train", [*STAGE2, "--data", "{root}/data.json", "--init", "{root}/ckpt_nan"], 1, "NaN"),
    ("train", [*STAGE2, "--data", "{root}/data.json", "--image-root", "{root}", "{root}"], 2, "--image-root"),
    # serve.py
    ("serve", ["--model", "{ckpt}", "--api-key-env", "LLAVA_MINI_TEST_UNSET_KEY"], 1, "LLAVA_MINI_TEST_UNSET_KEY"),
    ("serve", ["--model", "{root}/nothing"], 1, "nothing"),
    ("serve", ["--model", "{ckpt}", "--port", "-1"], 2, "--port"),
    ("serve", ["--model", "{ckpt}", "--max-body-mb", "0"], 2, "--max-body-mb"),
    # chat.py
    ("chat", ["--model", "{ckpt}", "--top-p", "2"], 2, "--top-p"),
    ("chat", ["--model", "{ckpt}", "--top-p", "0"], 2, "--top-p"),
    ("chat", ["--model", "{ckpt}", "--temperature", "-1"], 2, "--temperature"),
    ("chat", ["--model", "{ckpt}", "--max-new-tokens", "0"], 2, "--max-new-tokens"),
    ("chat", ["--model", "{ckpt}", "--seed", "-1"], 2, "--seed"),
    ("chat", ["--model", "{ckpt}", "--template", "alpaca"], 2, "--template"),
    ("chat", ["--model", "{root}/nothing", "--prompt", "hi"], 1, "nothing"),
    ("chat", ["--model", "{root}/ckpt_list", "--prompt", "hi"], 1, "config.json"),
    ("chat", ["--model", "{root}/ckpt_type", "--prompt", "hi"], 1, "hidden_size"),
    ("chat", ["--model", "{root}/ckpt_nan", "--prompt", "hi"], 1, "NaN"),
    ("chat", ["--model", "{root}/ckpt_nojson", "--prompt", "hi"], 1, "config.json: not valid JSON"),
    ("chat", ["--model", "{root}/ckpt_empty", "--prompt", "hi"], 1, "config and weights disagree"),
    ("chat", ["--model", "{ckpt}", "--image", "{root}/nowhere.png", "--prompt", "hi"], 1, "nowhere.png"),
    ("chat", ["--model", "{ckpt}", "--image", "{root}/text.png", "--prompt", "hi"], 1, "not an image file"),
    ("chat", ["--model", "{ckpt}", "--image", "{root}/truncated.png", "--prompt", "hi"], 1, "broken image file"),
    ("chat", ["--model", "{ckpt}", "--image", "{root}/bomb.png", "--prompt", "hi"], 1, "too large"),
    ("chat", ["--model", "{ckpt}", "--image", "{root}", "--prompt", "hi"], 1, "not a regular file"),
    ("chat", ["--model", "{ckpt}", "--image", "{root}/fifo", "--prompt", "hi"], 1, "not a regular file"),
    ("chat", ["--model", "{ckpt}", "--image", "{root}/img.png", "--prompt", "word " * 200], 1, "context"),
    # python -m llava_mini.eval.evaluate
    ("evaluate", ["--model", "{ckpt}"], 2, "--data"),
    ("evaluate", ["--model", "{ckpt}", "--easyvqa", "{root}/ev", "--bench"], 2, "--bench"),
    ("evaluate", ["--model", "{ckpt}", "--data", "{root}/ev", "--limit", "0"], 2, "--limit"),
    ("evaluate", ["--model", "{ckpt}", "--data", "{root}/ev", "--batch-size", "0"], 2, "--batch-size"),
    ("evaluate", ["--model", "{root}/nothing", "--data", "{root}/ev"], 1, "nothing"),
    ("evaluate", ["--model", "{ckpt}", "--data", "{root}"], 1, "test.json"),
    ("evaluate", ["--model", "{ckpt}", "--data", "{root}/ev_latin1"], 1, "not UTF-8"),
    ("evaluate", ["--model", "{ckpt}", "--data", "{root}/ev_escape"], 1, "points outside"),
    ("evaluate", ["--model", "{ckpt}", "--data", "{root}/ev_long"], 1, "context"),
    # python -m llava_mini.synth.world / coco
    ("world", ["--out", "{root}/w", "--train", "-3"], 2, "--train"),
    ("world", ["--out", "{root}/w", "--max-objects", "0"], 2, "--max-objects"),
    ("world", ["--out", "{root}/w", "--image-size", "4"], 2, "--image-size"),
    ("world", ["--out", "{root}/w", "--image-size", "big"], 2, "--image-size"),
    ("world", ["--out", "{root}/img.png", "--train", "1", "--test", "1"], 1, "img.png"),
    ("coco", ["--captions", "{root}/missing.json", "--instances", "{root}/bad.json", "--out", "{root}/c.json"], 1,
     "missing.json"),
    ("coco", ["--captions", "{root}/bad.json", "--instances", "{root}/bad.json", "--out", "{root}/c.json"], 1,
     "bad.json"),
    ("coco", ["--captions", "{root}/coco_caps.json", "--instances", "{root}/coco_nobbox.json",
              "--out", "{root}/c.json"], 1, "annotation 7"),
    ("coco", ["--captions", "{root}/coco_caps.json", "--instances", "{root}/object.json", "--out", "{root}/c.json"],
     1, "object.json: missing top-level key"),
    ("coco", ["--captions", "a", "--instances", "b", "--out", "c", "--limit", "0"], 2, "--limit"),
    ("coco", ["--captions", "a", "--instances", "b", "--out", "c", "--llm-base-url", "http://127.0.0.1:9/v1"], 2,
     "--llm-model"),
    # the other tools
    ("text_qa", ["--llm", "{root}/nothing"], 1, "nothing"),
    ("text_qa", ["--questions", "0"], 2, "--questions"),
    ("attention_map", ["--model", "{ckpt}", "--image", "{root}/img.png", "--question", "q", "--out", "a.png",
                       "--scale", "0"], 2, "--scale"),
    ("attention_map", ["--model", "{ckpt}", "--image", "{root}/bomb.png", "--question", "q",
                       "--out", "{root}/a.png"], 1, "too large"),
    ("attention_map", ["--model", "{ckpt}", "--image", "{root}/img.png", "--question", "q", "--out", "{root}/a.png",
                       "--layers", "99"], 1, "layer"),
    ("make_tiny", ["--lm-steps", "-1"], 2, "--lm-steps"),
    ("make_tiny", ["--clip-lr", "0"], 2, "--clip-lr"),
    ("make_tiny", ["--text-hidden", "zero"], 2, "--text-hidden"),
    ("make_tiny", ["--data", "{root}/nothing", "--out", "{root}/bases"], 1, "scenes_train.json"),
    ("convert_gguf", ["{root}/missing.gguf", "--out", "{root}/g"], 1, "missing.gguf"),
    ("convert_gguf", ["{root}/img.png", "--out", "{root}/g"], 1, "img.png"),
    ("convert_gguf", ["x.gguf", "--offline", "smollm2", "--out", "g"], 2, "not both"),
    ("download", [], 2, "repo id"),
    ("download", ["org/model", "--endpoint", "http://127.0.0.1:9", "--cache-dir", "{root}/cache",
                  "--out", "{root}/dl"], 1, "127.0.0.1:9"),
    ("report_table", ["{root}/missing.json"], 1, "missing.json"),
    ("report_table", ["{root}/object.json"], 1, "not a pipeline report.json"),
]


def run_tool(tool: str, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python TOOL argv`, run in this process as cli.run runs it."""
    main, out, err = TOOLS[tool](), io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run(main, argv)
        except SystemExit as e:
            if isinstance(e.code, str):      # sys.exit("error: ..."): Python prints it and exits with 1
                print(e.code, file=err)
            code = 1 if isinstance(e.code, str) else (e.code or 0)
    return code, out.getvalue(), err.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height in its header and holds no pixels (a decompression bomb's shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from test_chat import make_tiny_checkpoint
    root = tmp_path_factory.mktemp("bad")
    r = str(root)
    ckpt = make_tiny_checkpoint(os.path.join(r, "ckpt"))
    Image.new("RGB", (32, 32), (200, 30, 30)).save(os.path.join(r, "img.png"))
    sample = {"id": "s0", "image": "img.png",
              "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red."}]}
    _write(os.path.join(r, "data.json"), json.dumps([sample]))
    _write(os.path.join(r, "bad.json"), "[{not json")
    _write(os.path.join(r, "latin1.json"), '[{"id": "caf\xe9"}]'.encode("latin-1"), "wb")
    _write(os.path.join(r, "latin1.jsonl"), json.dumps(sample).encode() + b'\n{"id": "caf\xe9"}\n', "wb")
    _write(os.path.join(r, "object.json"), json.dumps({"samples": [sample]}))
    _write(os.path.join(r, "bad.jsonl"), json.dumps(sample) + "\n{oops\n")
    _write(os.path.join(r, "escape.json"), json.dumps([{**sample, "image": "../../../../etc/passwd"}]))
    _write(os.path.join(r, "noimage.json"), json.dumps([{**sample, "image": "nowhere.png"}]))
    _write(os.path.join(r, "turns.json"), json.dumps([{**sample, "id": "s-turns", "conversations": [
        {"from": "human", "value": "<image>\nHi"}, {"from": "human", "value": "Hi again"}]}]))
    _write(os.path.join(r, "text.png"), "this is not a picture")
    with open(os.path.join(r, "img.png"), "rb") as f:
        _write(os.path.join(r, "truncated.png"), f.read()[:60], "wb")
    _write(os.path.join(r, "bomb.png"), png_header(13000, 13000), "wb")
    os.mkfifo(os.path.join(r, "fifo"))
    _write(os.path.join(r, "coco_caps.json"), json.dumps({"images": [], "annotations": [
        {"id": 1, "image_id": 5, "caption": "A dog."}]}))
    _write(os.path.join(r, "coco_nobbox.json"), json.dumps({
        "images": [{"id": 5, "file_name": "5.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "dog"}], "annotations": [{"id": 7, "image_id": 5, "category_id": 1}]}))

    # broken checkpoints: a config value of the wrong type, a config that is a list, no JSON, NaN weights
    for name, edit in [("ckpt_type", lambda c: c["text_config"].update(hidden_size="four")),
                       ("ckpt_list", None), ("ckpt_nojson", None), ("ckpt_nan", lambda c: None),
                       ("ckpt_empty", lambda c: (c.clear(), c.update(model_type="llava")))]:
        shutil.copytree(ckpt, os.path.join(r, name))
        cfg_path = os.path.join(r, name, "config.json")
        if name == "ckpt_list":
            _write(cfg_path, "[1, 2]")
        elif name == "ckpt_nojson":
            _write(cfg_path, '{"model_type": "llava", ')
        else:
            with open(cfg_path) as f:
                cfg = json.load(f)
            edit(cfg)
            _write(cfg_path, json.dumps(cfg))
    weights = os.path.join(r, "ckpt_nan", "model.safetensors")
    state = load_file(weights)
    key = next(k for k in sorted(state) if k.endswith("norm.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, weights)

    # evaluation sets: fine, not UTF-8, an image outside the folder, a question longer than the context
    question = {"id": "q0", "image": "img.png", "question": "What colour?", "answer": "red", "question_type": "color"}
    for name, q in [("ev", question), ("ev_escape", {**question, "image": "/etc/passwd"}),
                    ("ev_long", {**question, "question": "word " * 300})]:
        os.makedirs(os.path.join(r, name))
        shutil.copy(os.path.join(r, "img.png"), os.path.join(r, name, "img.png"))
        _write(os.path.join(r, name, "test.json"), json.dumps([q]))
    os.makedirs(os.path.join(r, "ev_latin1"))
    _write(os.path.join(r, "ev_latin1", "test.json"), '[{"id": "caf\xe9"}]'.encode("latin-1"), "wb")
    return {"root": r, "ckpt": ckpt}


def snapshot(folder: str) -> dict:
    """Every file under `folder` (a named pipe by its name only) -> its bytes."""
    files = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            files[path] = None if not os.path.isfile(path) else open(path, "rb").read()
    return files


@pytest.mark.parametrize("tool, argv, code, culprit", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_clear_line(root, tool, argv, code, culprit):
    argv = [a.format(**root) for a in argv]
    before = snapshot(root["root"])
    got, _, err = run_tool(tool, argv)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert got == code, f"exit {got}, wanted {code}; stderr: {err[-500:]}"
    assert len(lines) == 1, f"wanted one 'error:' line, got: {err[-500:]}"
    assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    assert "Traceback" not in err and "internal error" not in err
    after = snapshot(root["root"])
    assert {p: b for p, b in after.items() if p in before} == before          # no input changed or lost
    assert not [p for p in after if p not in before and ".tmp" in os.path.basename(p)]   # nothing half-written


def test_table_covers_every_tool():
    assert len(CASES) >= 60 and {c[0] for c in CASES} == set(TOOLS)


def test_debug_shows_the_traceback(root):
    with pytest.raises(FileNotFoundError):
        cli.run(TOOLS["chat"](), ["--model", root["ckpt"], "--image", os.path.join(root["root"], "nowhere.png"),
                                  "--prompt", "hi", "--debug"])


def test_an_unforeseen_error_is_one_line_that_says_it_is_a_bug(capsys):
    def main(argv):
        raise TypeError("unsupported operand")
    with pytest.raises(SystemExit) as e:
        cli.run(main, [])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: TypeError: unsupported operand") and "--debug" in err


def test_interactive_chat_survives_bad_lines_and_images(root):
    """One bad line or /image must not end a conversation: a byte that is not UTF-8, a decompression bomb, a named
    pipe (which would block forever if opened), a folder. The chat says what was wrong and goes on."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = root["root"]
    stdin = (b"What is it? caf\xe9 \xff\n" + f"/image {r}/bomb.png\n/image {r}/fifo\n/image {r}\n".encode() +
             b"Still there?\n/quit\n")
    out = subprocess.run([sys.executable, os.path.join(repo, "chat.py"), "--model", root["ckpt"], "--image",
                          os.path.join(r, "img.png"), "--max-new-tokens", "4"], input=stdin, capture_output=True,
                         timeout=120, cwd=repo)
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr.decode()[-800:]
    assert "not UTF-8" in text and "too large" in text and text.count("not a regular file") == 2
    assert text.count("ASSISTANT:") == 2            # both questions were answered
