"""The COCO route: LLaVA-Instruct-style data from COCO captions + instances, written by the same teachers.

    python -m llava_mini.synth.coco --captions captions_train2017.json --instances instances_train2017.json \\
        --out llava_instruct.json [--limit 1000] [--short-answer] [--llm-base-url http://127.0.0.1:8000/v1 --llm-model NAME]

COCO's boxes become the teacher's symbolic form (`name: [x1, y1, x2, y2]`, normalised), as the paper gave GPT-4.
"""
from __future__ import annotations

import contextlib
import random

from llava_mini import cli
from llava_mini.jsonio import read_json, write_json
from llava_mini.synth.instruct_data import make_instruct_data
from llava_mini.synth.teacher import AnswerBalancer, RuleTeacher, boxes_of


@contextlib.contextmanager
def _annotation(path: str, a):
    """A malformed annotation (a key missing, a caption that is not text, a zero width) is an error naming it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        name = a.get("id") if isinstance(a, dict) else str(a)[:40]
        raise ValueError(f"{path}: annotation {name}: {type(e).__name__} {e}") from None


def load_coco(captions_path: str, instances_path: str) -> tuple[list[dict], list[str]]:
    """COCO captions + instances files -> (items {id, image, context}, category names).

    Boxes [x, y, w, h] in pixels become normalised [x1, y1, x2, y2]. Images without captions or boxes are skipped."""
    caps, inst = read_json(captions_path), read_json(instances_path)
    for path, data, keys in ((captions_path, caps, ("images", "annotations")),
                             (instances_path, inst, ("images", "annotations", "categories"))):
        for key in keys:
            if key not in data:
                raise ValueError(f"{path}: missing top-level key {key!r} (is this a COCO annotation file?)")
    with _annotation(instances_path, {"id": "categories/images"}):
        categories = {c["id"]: c["name"] for c in inst["categories"]}
        images = {im["id"]: im for im in inst["images"]}
    captions, boxes = {}, {}
    for a in caps["annotations"]:
        with _annotation(captions_path, a):
            captions.setdefault(a["image_id"], []).append(a["caption"].strip())
    for a in inst["annotations"]:
        with _annotation(instances_path, a):
            im = images.get(a["image_id"])
            if im is None or a.get("category_id") not in categories:
                raise ValueError(f"refers to unknown image {a.get('image_id')} or category {a.get('category_id')}")
            x, y, w, h = a["bbox"]
            W, H = im["width"], im["height"]
            box = [max(0.0, x / W), max(0.0, y / H), min(1.0, (x + w) / W), min(1.0, (y + h) / H)]
            boxes.setdefault(a["image_id"], []).append((categories[a["category_id"]], box))
    items = [{"id": str(i), "image": images[i]["file_name"],
              "context": {"captions": captions[i], "boxes": boxes_of(boxes[i])}}
             for i in sorted(images) if i in captions and i in boxes]
    return items, sorted(set(categories.values()))


def main(argv=None):
    p = cli.ArgumentParser(description="LLaVA-Instruct-style data from COCO captions + instances")
    p.add_argument("--captions", required=True)
    p.add_argument("--instances", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=cli.positive_int, default=None, help="only the first N images")
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--short-answer", action="store_true", help="also write short-answer VQA turns")
    p.add_argument("--llm-base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--llm-model", default=None)
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the environment variable with the key")
    p.add_argument("--cache-dir", default=".cache/llm_teacher")
    args = p.parse_args(argv)
    if args.llm_base_url and not args.llm_model:
        p.error("--llm-base-url needs --llm-model (the model name the endpoint serves)")
    items, vocab = load_coco(args.captions, args.instances)
    items = items[:args.limit]
    if args.llm_base_url:
        from llava_mini.synth.llm_client import ChatClient
        from llava_mini.synth.llm_teacher import LLMTeacher
        teacher = LLMTeacher(ChatClient(args.llm_base_url, args.llm_model, args.api_key_env, args.cache_dir))
    else:
        teacher = RuleTeacher(vocab)
    balancer = AnswerBalancer(random.Random(f"{args.seed}:coco-questions")) if args.short_answer else None
    data = make_instruct_data(items, teacher, args.seed, vocabulary=vocab, balancer=balancer)
    write_json(data, args.out)
    print(f"wrote {len(data)} samples from {len(items)} images to {args.out}; rejected: {dict(teacher.rejected)}")


if __name__ == "__main__":
    cli.run(main)
