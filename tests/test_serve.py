"""serve.py: the OpenAI-compatible server over a tiny random LLaVA, spoken to over real HTTP on 127.0.0.1.
Answers equal chat.py's tokens; every bad request is a 4xx JSON error and the server keeps serving; 32 clients at
once all get their answers; the API key is enforced and never logged; our own LLM client talks to it."""
import base64
import concurrent.futures
import contextlib
import io
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from PIL import Image
from test_chat import make_tiny_checkpoint

from llava_mini.loading.model_folder import load_checkpoint
from llava_mini.serving.openai_api import Engine, TextStream
from llava_mini.serving.server import make_server

QUESTION = "What colour is the circle?"


def png_data_url(color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user(text: str, image_url: str | None = None) -> dict:
    parts = [{"type": "text", "text": text}] + ([{"type": "image_url", "image_url": {"url": image_url}}]
                                                if image_url else [])
    return {"role": "user", "content": parts}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = make_tiny_checkpoint(str(tmp_path_factory.mktemp("serve") / "ckpt"))
    return load_checkpoint(folder)


@contextlib.contextmanager
def serving(model, **kwargs):
    net, tokenizer, template = model
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        server = make_server(Engine(net, tokenizer, template, "tiny", max_new_tokens=12), port=0, **kwargs)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", log
        finally:
            server.shutdown()
            server.server_close()


def post(url: str, body, headers=None, raw: bytes | None = None):
    """(status, parsed JSON or the raw text) of a POST to /v1/chat/completions."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if r.headers.get("Content-Type") == "application/json" else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def models_ok(url: str) -> bool:
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        return r.status == 200 and json.loads(r.read())["data"][0]["id"] == "tiny"


def test_answers_equal_chat_and_stream_the_same_text(model, tmp_path):
    from chat import ChatSession
    net, tokenizer, template = model
    session = ChatSession(net, tokenizer, template, max_new_tokens=12)
    (tmp_path / "img.png").write_bytes(base64.b64decode(png_data_url().split(",", 1)[1]))
    session.set_image(str(tmp_path / "img.png"))
    expected = tokenizer.decode(session.ask(QUESTION)).strip()
    with serving(model) as (url, _):
        status, reply = post(url, {"messages": [user(QUESTION, png_data_url())], "temperature": 0, "max_tokens": 12})
        assert status == 200 and expected
        assert reply["choices"][0]["message"]["content"] == expected
        assert reply["usage"]["completion_tokens"] <= 12
        status, events = post(url, {"messages": [user(QUESTION, png_data_url())], "temperature": 0,
                                    "max_tokens": 12, "stream": True})
        assert status == 200
        lines = [line[len("data: "):] for line in events.split("\n\n") if line]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(line)["choices"][0] for line in lines[:-1]]
        assert chunks[0]["delta"] == {"role": "assistant"} and chunks[-1]["finish_reason"] in ("stop", "length")
        assert "".join(c["delta"].get("content", "") for c in chunks) == expected


def test_every_bad_request_is_a_json_4xx_and_the_server_keeps_serving(model):
    good = [user(QUESTION, png_data_url())]
    big = "data:image/png;base64," + "A" * (4 * 2 ** 20)
    cases = [
        (dict(raw=b"{not json"), 400, "not JSON"),
        ({"messages": good, "temperature": 0, "top_k": 3}, 400, "unknown field 'top_k'"),
        ({"messages": good, "model": "gpt-4"}, 404, "unknown model 'gpt-4'"),
        ({"messages": [user("hi", "data:image/png;base64,aGVsbG8=")]}, 400, "not an image file"),
        ({"messages": [user("hi", "https://example.com/cat.png")]}, 400, "fetches nothing from the network"),
        ({"messages": [user("hi", big)]}, 413, "more than the 1048576"),
        ({"messages": [user("word " * 400)]}, 400, "over the model's context of 160"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "where 'user' was expected"),
        ({"messages": good, "temperature": 9}, 400, "'temperature' must be in [0.0, 2.0]"),
        ({"messages": []}, 400, "'messages' must be a non-empty list"),
    ]
    with serving(model, max_image_bytes=2 ** 20, max_body=8 * 2 ** 20) as (url, _):
        for body, status, message in cases:
            got, reply = post(url, None, raw=body["raw"]) if "raw" in body else post(url, body)
            assert got == status and message in reply["error"]["message"], (body if "raw" in body else message)
            assert models_ok(url)
        # a body over the limit is refused from its Content-Length, before a byte of it is read
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {9 * 2 ** 20}\r\n\r\n"
                      .encode())
            answer = s.makefile("rb").read().decode()
        assert answer.startswith("HTTP/1.1 413") and f"the request body is {9 * 2 ** 20} bytes" in answer
        assert models_ok(url)


def test_a_client_that_leaves_mid_stream_does_not_stop_the_server(model):
    with serving(model) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"messages": [user(QUESTION, png_data_url())], "stream": True, "temperature": 0}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert s.recv(64).startswith(b"HTTP/1.1 200")          # the stream has begun; now hang up
        status, reply = post(url, {"messages": [user(QUESTION)], "temperature": 0})
        assert status == 200 and reply["choices"][0]["message"]["content"]


def test_32_clients_at_once_all_get_their_answers(model):
    with serving(model) as (url, _):
        body = {"messages": [user(QUESTION, png_data_url())], "temperature": 0, "max_tokens": 6}
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            replies = list(pool.map(lambda _: post(url, body), range(32)))
    assert all(status == 200 for status, _ in replies)
    assert len({reply["choices"][0]["message"]["content"] for _, reply in replies}) == 1   # greedy: one answer


def test_api_key_is_required_and_never_logged(model, monkeypatch):
    from llava_mini.synth.llm_client import ChatClient
    key = "sk-classroom-secret-1234"
    with serving(model, api_key=key) as (url, log):
        body = {"messages": [user(QUESTION)], "temperature": 0}
        assert post(url, body)[0] == 401
        assert post(url, body, {"Authorization": "Bearer wrong"})[0] == 401
        assert post(url, body, {"Authorization": f"Bearer {key}"})[0] == 200
        monkeypatch.setenv("CLASSROOM_KEY", key)
        client = ChatClient(url + "/v1", "tiny", api_key_env="CLASSROOM_KEY", max_retries=0)
        answer = client.chat([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}])
        assert isinstance(answer, str) and answer

        def get_status(path, headers=None):
            try:
                with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers or {}), timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        # The page's own files are public (it must load to ask for the key); everything that reaches data is not.
        assert get_status("/") == get_status("/static/app.js") == 200
        assert get_status("/v1/models") == get_status("/classroom/images") == get_status("/classroom/blank.png") == 401
        assert get_status("/v1/models", {"Authorization": f"Bearer {key}"}) == 200
    logged = log.getvalue()
    assert "POST /v1/chat/completions 401" in logged and "POST /v1/chat/completions 200" in logged
    assert key not in logged


def test_text_stream_never_passes_a_stop_string():
    class Letters:                                            # a tokenizer whose ids are characters
        def decode(self, ids):
            return "".join(chr(i) for i in ids)
    pieces = []
    stream = TextStream(Letters(), ["END"], pieces.append)
    for ch in "the answer ENDING here":
        stream(ord(ch))
    assert "".join(pieces) == "the answer " == stream.text_so_far() and stream.stopped


def test_a_text_only_llm_answers_and_refuses_an_image(tmp_path):
    """serve.py --model <a plain LLaMA>: the engine answers text, and an image for it is a 400 naming why."""
    from test_chat import make_tokenizer_json

    from llava_mini.data.tokenizer import Tokenizer
    from llava_mini.model.config import TextConfig
    from llava_mini.model.llama import LlamaForCausalLM
    from llava_mini.serving.openai_api import RequestError, parse_chat_request
    tokenizer = Tokenizer.from_file(make_tokenizer_json(str(tmp_path / "tok.json")))
    llm = LlamaForCausalLM(TextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, eos_token_id=tokenizer.eos_id)).eval()
    engine = Engine(llm, tokenizer, "vicuna_v1", "text", max_new_tokens=5)
    reply = engine.complete(parse_chat_request({"messages": [{"role": "system", "content": "Be brief."},
                                                             user("Hello?")], "temperature": 0}))
    assert reply["usage"]["completion_tokens"] <= 5 and engine.model_card()["vision"] is False
    with pytest.raises(RequestError, match="text-only"):
        engine.complete(parse_chat_request({"messages": [user("What is this?", png_data_url())]}))


def test_the_heat_map_route_draws_a_png_and_refuses_bad_requests(model):
    def attention(url, body):
        request = urllib.request.Request(url + "/classroom/attention", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    with serving(model) as (url, _):
        status, reply = attention(url, {"image": png_data_url(), "question": QUESTION, "answer": "red"})
        assert status == 200 and reply["heatmap"].startswith("data:image/png;base64,")
        heat = Image.open(io.BytesIO(base64.b64decode(reply["heatmap"].split(",", 1)[1])))
        assert heat.width >= 320
        assert attention(url, {"question": QUESTION})[0] == 400
        assert attention(url, {"image": "data:image/png;base64,aGVsbG8=", "question": "q", "answer": "a"})[0] == 400
        assert models_ok(url)
