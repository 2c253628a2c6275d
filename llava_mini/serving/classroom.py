"""What the classroom page needs besides the OpenAI API: its static files, a gallery of held-out images, the blank
image of the "blind" switch, and the attention heat map of an answer (llava_mini.eval.attention_map).

Each route returns (status, content type, body bytes); server.py sends them. The page and its files are in
static/ (plain HTML, CSS and JavaScript: no build step, nothing fetched from the internet).
"""
from __future__ import annotations

import base64
import io
import json
import os

from PIL import Image

from llava_mini.serving.openai_api import RequestError, image_from_url

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
GALLERY_SIZE = 24            # the first held-out images: enough to choose from, few enough to fit on a projector
MAP_SIZE = 320               # the heat map's width in pixels (the page shows images at 320 x 320)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def static_file(name: str):
    if name not in STATIC_FILES:                        # a fixed list: no path from a request reaches the disk
        return None
    with open(os.path.join(STATIC, name), "rb") as f:
        return 200, STATIC_FILES[name], f.read()


def gallery(image_dir: str | None) -> list[str]:
    """The first GALLERY_SIZE PNG names in image_dir (none without one)."""
    if not image_dir or not os.path.isdir(image_dir):
        return []
    return sorted(n for n in os.listdir(image_dir) if n.endswith(".png"))[:GALLERY_SIZE]


def gallery_image(image_dir: str | None, name: str):
    if name not in gallery(image_dir):                   # only names the listing gave out
        return None
    with open(os.path.join(image_dir, name), "rb") as f:
        return 200, "image/png", f.read()


def blank_png(engine) -> bytes:
    """The blind baseline's image: the mean colour the tower's preprocessing pads with (evaluate.blank_image)."""
    from llava_mini.eval.evaluate import blank_image
    if engine.text_only:
        return png(Image.new("RGB", (64, 64), (122, 116, 104)))
    return png(blank_image(engine.model.config.vision_config))


def attention_heatmap(engine, body) -> bytes:
    """{"image": data URL, "question", "answer"} -> {"heatmap": data URL}: where the answer's tokens looked, as
    attention_map draws it (all layers and heads, the answer scored as given)."""
    from llava_mini.eval.attention_map import answer_attention, overlay
    if engine.text_only:
        raise RequestError(f"model {engine.name} is text-only: there is no image to look at", status=404)
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) and body[k] for k in
                                             ("image", "question", "answer")):
        raise RequestError("send {\"image\": a data: URL, \"question\": text, \"answer\": text}")
    image = image_from_url(body["image"])
    _, weights = answer_attention(engine.model, engine.tokenizer, image, body["question"], engine.template,
                                  answer=body["answer"])
    heat = overlay(image, weights, engine.model.config.image_aspect_ratio, scale=max(1, MAP_SIZE // image.width))
    return json.dumps({"heatmap": "data:image/png;base64," + base64.b64encode(png(heat)).decode()}).encode()
