"""A small client for OpenAI-compatible chat endpoints, on the standard library only (urllib).

Used by the LLM teacher (llm_teacher.py) and the LLM judge (judges.py). Any server that speaks
`POST {base_url}/chat/completions` works: OpenAI, vLLM, llama.cpp's server, Ollama's OpenAI route.

    client = ChatClient("http://127.0.0.1:8000/v1", "my-model", api_key_env="OPENAI_API_KEY", cache_dir=".cache/llm")
    text = client.chat([{"role": "user", "content": "Hello"}])

- The API key is read from the environment variable named by `api_key_env` at request time. It is sent in the
  Authorization header and nowhere else: not in the cache key, not in cache files, not in error messages or logs.
- Retries with exponential backoff on 429, 5xx, connection errors and timeouts; other 4xx fail at once.
- A redirect is an error naming where it points, never followed: following would send the key to another host and
  turn the POST into a GET.
- With `cache_dir`, each answer is stored under the hash of the request (URL, model, messages, temperature), so a rerun
  of the same requests costs nothing.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.request

from llava_mini.jsonio import read_json, write_json

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REDIRECT_STATUS = {301, 302, 303, 307, 308}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow: urllib would copy the Authorization header to any host and turn a POST into a GET."""
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class ChatError(RuntimeError):
    """The endpoint failed for good (after retries, or with an error that retrying cannot fix)."""


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", cache_dir: str | None = None,
                 max_retries: int = 5, timeout: float = 60.0, backoff: float = 1.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env  # the variable's *name*; the key itself is never stored on this object
        self.cache_dir = cache_dir
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.http_requests = 0  # attempts that went over the network (retries included)
        self.cache_hits = 0

    def _cache_path(self, payload: dict) -> str | None:
        if not self.cache_dir:
            return None
        key = hashlib.sha256(json.dumps({"url": self.url, **payload}, sort_keys=True).encode()).hexdigest()
        return os.path.join(self.cache_dir, key[:2], key + ".json")

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "[redacted]") if key else text

    def chat(self, messages: list[dict], temperature: float = 0.0, max_tokens: int | None = None) -> str:
        """Send one chat request and return the assistant's text (from the cache when this request was seen)."""
        payload = {"model": self.model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        cache_path = self._cache_path(payload)
        if cache_path and os.path.exists(cache_path):
            try:
                cached = read_json(cache_path).get("response")
            except (ValueError, AttributeError):
                cached = None
            if isinstance(cached, str):
                self.cache_hits += 1
                return cached
            os.remove(cache_path)      # written by an older client, or damaged: ask again

        text = self._post_with_retries(payload)
        if cache_path:
            os.makedirs(os.path.dirname(cache_path), exist_ok=True)
            write_json({"request": payload, "response": text}, cache_path)  # payload holds no key
        return text

    def _post_with_retries(self, payload: dict) -> str:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps(payload).encode()
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.http_requests += 1
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with _opener.open(request, timeout=self.timeout) as response:
                    answer = json.loads(self._read_within(response, time.monotonic() + self.timeout).decode())
                content = _content(answer)
                if content is not None:
                    return content
                # null, a number, a list: a broken reply, never cached; the next attempt may be whole
                last_error = (f"response has no text in choices[0].message.content: "
                              f"{self._redact(json.dumps(answer))[:300]}")
            except urllib.error.HTTPError as e:
                if e.code in REDIRECT_STATUS:
                    raise ChatError(f"{self.url}: the server answered a redirect (HTTP {e.code}) to "
                                    f"{self._redact(e.headers.get('Location', '?'))[:200]}; not followed (it would "
                                    f"take the API key and the request elsewhere): point base_url there if you "
                                    f"trust it") from None
                try:
                    detail = self._redact(e.read().decode(errors="replace"))[:300]
                except (OSError, http.client.HTTPException) as read_error:   # the error body itself timed out
                    detail = f"(body unreadable: {type(read_error).__name__})"
                last_error = f"HTTP {e.code}: {detail}"
                if e.code not in RETRY_STATUS:
                    raise ChatError(f"{self.url}: {last_error}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                # refused, reset, timed out, cut mid-body (IncompleteRead), a garbled status line (BadStatusLine)
                last_error = self._redact(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                last_error = f"response is not JSON text ({type(e).__name__}: {str(e)[:100]})"
        raise ChatError(f"{self.url}: gave up after {self.max_retries + 1} attempts; last error {last_error}")

    def _read_within(self, response, deadline: float) -> bytes:
        """The whole body, or TimeoutError once `deadline` passes: the socket timeout only bounds each read, and a
        server that sends a byte a second would otherwise hold the client for as long as it likes."""
        chunks = []
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the reply took longer than {self.timeout} s")
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _content(answer) -> str | None:
    """choices[0].message.content when it is text, else None."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None
