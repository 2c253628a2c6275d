"""The OpenAI chat-completions convention, for our models: a request's JSON -> a checked ChatRequest -> an answer.

    engine = Engine(model, tokenizer, "vicuna_v1", name="tiny")
    request = parse_chat_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in the picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}]})
    engine.complete(request)                    # the response dict
    engine.complete(request, on_text=print)     # streamed: each new piece of text as it is generated

This is the convention llama.cpp, vLLM and Ollama serve LLaVA with: `messages` of roles system / user / assistant,
whose content is a string or a list of text and image_url parts (images as data: URLs; a server that fetched
URLs would be a way into the network it runs in). One image per request, put where LLaVA puts it: at the start of
the user turn that carries it. A system message replaces the template's system prompt. Everything that is wrong
with a request is a RequestError naming it, which the server answers with HTTP 400 (or 413 for a size).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import time
import uuid

import torch

from llava_mini.data.conversation import get_template, stop_token_ids, tokenize_prompt
from llava_mini.data.images import decode_image, preprocess_image
from llava_mini.data.tokenizer import IMAGE_TOKEN

FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "stream", "n",
          "seed", "user"}
MAX_IMAGE_BYTES = 10 * 2 ** 20


class RequestError(ValueError):
    """A request we cannot answer, with the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class ChatRequest:
    turns: list[str]                      # user, assistant, ..., user; the image's placeholder in its turn
    image: object | None = None           # a PIL image, or None
    system: str | None = None
    temperature: float = 1.0              # the OpenAI default; 0 is greedy
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: list[str] = dataclasses.field(default_factory=list)
    stream: bool = False
    seed: int | None = None
    model: str | None = None


def _number(body: dict, key: str, default, low: float, high: float, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise RequestError(f"'{key}' must be a{'n integer' if integer else ' number'}, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be in [{low}, {high}], got {value}")
    return value


def image_from_url(url, max_bytes: int = MAX_IMAGE_BYTES):
    """A data: URL (base64) -> a PIL image; RequestError naming what is wrong (413 past `max_bytes`)."""
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise RequestError("an image_url must be a data: URL with base64 data (data:image/png;base64,...); "
                           "this server fetches nothing from the network")
    data = url.split(";base64,", 1)[1]
    if len(data) * 3 // 4 > max_bytes:
        raise RequestError(f"the image is {len(data) * 3 // 4} bytes, more than the {max_bytes} this server takes",
                           status=413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("the image_url's base64 data is not valid base64") from None
    try:
        return decode_image(raw, "the image_url")
    except ValueError as e:
        raise RequestError(str(e)) from None


def _content(message: dict, index: int, max_image_bytes: int) -> tuple[str, list]:
    """A message's text, and the images among its parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(f"messages[{index}].content must be a string or a list of parts")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(image_from_url(url.get("url") if isinstance(url, dict) else url, max_image_bytes))
        else:
            raise RequestError(f"messages[{index}].content[{j}]: a part is {{'type': 'text', 'text': ...}} or "
                               "{'type': 'image_url', 'image_url': {'url': 'data:...'}}")
    return "\n".join(texts), images


def parse_chat_request(body, max_image_bytes: int = MAX_IMAGE_BYTES) -> ChatRequest:
    """Check a /v1/chat/completions body and turn it into a ChatRequest (RequestError on anything wrong)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} (this server reads: {', '.join(sorted(FIELDS))})")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    if body.get("n", 1) != 1:
        raise RequestError("'n' must be 1: this server writes one answer per request")
    system, turns, image = None, [], None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}] needs a role of system, user or assistant")
        text, images = _content(m, i, max_image_bytes)
        if m["role"] == "system":
            if turns:
                raise RequestError(f"messages[{i}]: a system message must come before the conversation")
            system = text
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise RequestError(f"messages[{i}] is {m['role']!r} where {expected!r} was expected "
                               "(user and assistant take turns, starting and ending with user)")
        if images and (image is not None or len(images) > 1 or m["role"] != "user"):
            raise RequestError(f"messages[{i}]: one image per request, in a user message")
        if IMAGE_TOKEN in text:
            raise RequestError(f"messages[{i}] contains {IMAGE_TOKEN!r} as text; send the image as an image_url part")
        if images:
            image, text = images[0], f"{IMAGE_TOKEN}\n{text}"
        turns.append(text)
    if len(turns) % 2 != 1:
        raise RequestError("the last message must be the user's")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("'stop' must be a string or a list of at most 4 non-empty strings")
    if not isinstance(body.get("stream", False), bool):
        raise RequestError("'stream' must be true or false")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return ChatRequest(turns, image, system, _number(body, "temperature", 1.0, 0.0, 2.0),
                       _number(body, "top_p", 1.0, 1e-9, 1.0),
                       None if max_tokens is None else _number({"max_tokens": max_tokens}, "max_tokens", None, 1,
                                                               1 << 20, integer=True),
                       stop, body.get("stream", False), _number(body, "seed", None, 0, 2 ** 63 - 1, integer=True),
                       body.get("model"))


class TextStream:
    """Turns generated token ids into new text as it becomes final: whole characters only (a byte token can be half
    of one), and never past a stop string (text that might be the start of one is held back)."""

    def __init__(self, tokenizer, stop: list[str], on_text=None):
        self.tokenizer, self.stop, self.on_text = tokenizer, stop, on_text
        self.ids, self.sent, self.stopped = [], "", False

    def text_so_far(self) -> str:
        text = self.tokenizer.decode(self.ids).lstrip()
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            self.stopped = True
            return text[:cut]
        return text

    def __call__(self, token_id: int):
        if self.stopped:
            return
        self.ids.append(token_id)
        text = self.text_so_far()
        if not self.stopped:
            if text.endswith("\ufffd"):
                return
            hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[:len(text) - hold]
        if self.on_text and len(text) > len(self.sent):
            self.on_text(text[len(self.sent):])
        self.sent = max(self.sent, text, key=len)


class Engine:
    """One model behind the API. complete() is not thread-safe: the server runs one request at a time."""

    def __init__(self, model, tokenizer, template: str, name: str, device="cpu", max_new_tokens: int = 512):
        self.model, self.tokenizer, self.name, self.device = model, tokenizer, name, device
        self.template = get_template(template)
        self.text_only = not hasattr(model, "vision_tower")
        self.llm = model if self.text_only else model.language_model
        self.context = self.llm.config.max_position_embeddings
        self.max_new_tokens = max_new_tokens
        self.parameters = sum(p.numel() for p in model.parameters())

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        template = self.template if request.system is None else dataclasses.replace(self.template,
                                                                                     system=request.system)
        return tokenize_prompt(self.tokenizer, request.turns, template)

    def complete(self, request: ChatRequest, on_text=None) -> dict:
        """Answer `request`; with `on_text`, call it with each new piece of the answer's text as it is generated."""
        if request.image is not None and self.text_only:
            raise RequestError(f"model {self.name} is text-only (no vision tower): it cannot take an image")
        ids = self.prompt_ids(request)
        n_image = self.model.config.num_image_tokens if request.image is not None else 0
        used = len(ids) + max(0, n_image - 1)
        if used >= self.context:
            raise RequestError(f"the prompt takes {used} positions: over the model's context of {self.context}")
        max_new = request.max_tokens or min(self.max_new_tokens, self.context - used)
        if used + max_new > self.context:
            raise RequestError(f"the prompt takes {used} positions and max_tokens {max_new} more: over the model's "
                               f"context of {self.context}")
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        stream = TextStream(self.tokenizer, request.stop, on_text)
        options = dict(max_new_tokens=max_new, temperature=request.temperature, top_p=request.top_p,
                       stop_token_ids=stop_token_ids(self.tokenizer, self.template), streamer=stream,
                       generator=generator)
        input_ids = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            if self.text_only:
                out = self.model.generate(input_ids=input_ids, **options)
            else:
                pixels = None
                if request.image is not None:
                    pixels = preprocess_image(request.image, self.model.config.vision_config,
                                              self.model.config.image_aspect_ratio)[None].to(self.device)
                    pixels = pixels.to(next(self.model.vision_tower.parameters()).dtype)
                out = self.model.generate(input_ids, pixels, **options)
        text = stream.text_so_far()
        if on_text and len(text) > len(stream.sent):
            on_text(text[len(stream.sent):])
        finish = "stop" if stream.stopped or len(out.tokens[0]) < max_new else "length"
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                 "finish_reason": finish}],
                "usage": {"prompt_tokens": used, "completion_tokens": len(out.tokens[0]),
                          "total_tokens": used + len(out.tokens[0])}}

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "llava_mini",
                "parameters": self.parameters, "vision": not self.text_only, "context_length": self.context}
