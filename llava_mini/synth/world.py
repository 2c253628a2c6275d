"""The shapes world: scenes whose truth we know, rendered to small images, with the symbolic form a teacher reads.

LLaVA's teacher never sees pixels, only captions and boxes. Here every scene *is* its symbolic form (shapes, colours,
sizes, boxes), so every answer the teacher writes can be checked exactly. Run:

    python -m llava_mini.synth.world --out data/shapes --train 5000 --test 500 [--seed 0 --image-size 64]
        [--llm-teacher http://127.0.0.1:8001/v1 --llm-model smollm2]   # and a real LLM teacher (synth/teacher_run.py)

It writes under --out (the contract in docs/ARCHITECTURE.md, "Files on disk that cross boundaries"):
    images/{train,test}/{id}.png    scenes_{train,test}.json
    stage1.json   caption pairs          stage2.json   conversation, detail, complex, short-answer VQA
    test.json     held-out short-answer questions with exact answers, question_type, phrasing and (look-ups) choices
    bench.json    LLaVA-Bench-style questions: one conv, one detail and one complex question on each of the first
                  BENCH_IMAGES held-out scenes (150 with the default 500), with context and references
    llm_teacher.json, llm_teacher_report.json   with --llm-teacher: the LLM's fact-checked samples, and why the
                  others were rejected
and prints answer statistics (the majority-answer rate per question type is what a blind model could score).
"""
from __future__ import annotations

import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from PIL import Image, ImageDraw
from tqdm import tqdm

from llava_mini import cli
from llava_mini.jsonio import write_json
from llava_mini.synth.teacher import (
    AnswerBalancer,
    RuleTeacher,
    article,
    join,
    position_name,
    short_answer_questions,
    symbolic_context,
)
from llava_mini.synth.instruct_data import make_instruct_data, stage1_pairs
from llava_mini.synth.teacher_run import add_teacher_arguments, teach_world

# Colours are far apart in RGB so that an object's interior is unambiguous even after anti-aliasing.
COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (245, 210, 40),
    "black": (20, 20, 20), "gray": (128, 128, 128), "teal": (0, 140, 140), "brown": (130, 80, 40),
    "white": (250, 250, 250), "purple": (140, 60, 180), "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "rectangle", "triangle", "star", "diamond")
BACKGROUND = ("pale blue", (195, 210, 228))  # no object colour is close to it
SIZES = {"small": (0.20, 0.24), "large": (0.32, 0.38)}  # side of the (unrotated) bounding box, fraction of the image
# Draw at 4x and average each 4x4 block (Image.BOX): anti-aliased edges, and unlike LANCZOS no ringing halo,
# so every pixel that differs from the background lies inside its object's box.
SUPERSAMPLE = 4
BENCH_IMAGES = 50   # held-out scenes in the LLaVA-Bench-style set (x 3 categories)


@dataclass
class WorldConfig:
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple = SHAPES
    colors: tuple = tuple(COLORS)
    rotate: bool = False        # rotate polygons by a random angle (boxes stay tight)
    allow_overlap: bool = False
    repeat_prob: float = 0.3    # chance a new object reuses an earlier colour or shape, so "how many red ..." > 1 happens
    gap: float = 0.03           # minimum empty space between boxes when overlap is not allowed


def shape_outline(shape: str, side: float, angle: float) -> list[tuple[float, float]] | None:
    """Polygon vertices around (0, 0) for a shape whose unrotated box is about `side` wide; None for a circle."""
    h = side / 2
    if shape == "circle":
        return None
    if shape == "square":
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "rectangle":
        pts = [(-h, -0.55 * h), (h, -0.55 * h), (h, 0.55 * h), (-h, 0.55 * h)]
    elif shape == "triangle":
        pts = [(0, -h), (h, h), (-h, h)]
    elif shape == "diamond":
        pts = [(0, -h), (0.75 * h, 0), (0, h), (-0.75 * h, 0)]
    elif shape == "star":  # five points; outer radius chosen so the star is `side` wide
        outer, inner = side / (2 * math.sin(math.radians(72))), 0.45 * side / (2 * math.sin(math.radians(72)))
        pts = [((outer if k % 2 == 0 else inner) * math.sin(k * math.pi / 5),
                -(outer if k % 2 == 0 else inner) * math.cos(k * math.pi / 5)) for k in range(10)]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in pts]


def half_extent(shape: str, side: float, angle: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) distances of the tight box from the shape's centre."""
    pts = shape_outline(shape, side, angle)
    if pts is None:
        return side / 2, side / 2, side / 2, side / 2
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return -min(xs), -min(ys), max(xs), max(ys)


def _overlaps(a, b, gap):
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def reading_order(obj: dict) -> tuple[int, float]:
    """Where an object comes when the scene is read like a page: the top third's objects first, each third left to
    right. Captions, descriptions and boxes list objects in this order, so "Describe the image." asks a small model
    to scan the image once, top to bottom as its patches reach the LLM, instead of recalling what it has named."""
    x0, y0, x1, y1 = obj["bbox"]
    return min(int((y0 + y1) / 2 * 3), 2), (x0 + x1) / 2      # the box centre, the point positions are named by


def sample_scene(rng: random.Random, cfg: WorldConfig, scene_id: str, image: str) -> dict:
    """One scene: objects with shape, colour, size, rotation and a tight normalised box; plus captions."""
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    for _attempt in range(100):  # placement can fail for crowded scenes; then resample everything
        objects, boxes = [], []
        for _ in range(n):
            shape, color = rng.choice(cfg.shapes), rng.choice(cfg.colors)
            if objects and rng.random() < cfg.repeat_prob:
                other = rng.choice(objects)
                if rng.random() < 0.5:
                    shape = other["shape"]
                else:
                    color = other["color"]
            size = rng.choice(("small", "large"))
            side = rng.uniform(*SIZES[size])
            angle = rng.uniform(0, 2 * math.pi) if cfg.rotate and shape != "circle" else 0.0
            left, top, right, bottom = half_extent(shape, side, angle)
            for _try in range(50):
                cx, cy = rng.uniform(left, 1 - right), rng.uniform(top, 1 - bottom)
                box = (cx - left, cy - top, cx + right, cy + bottom)
                if cfg.allow_overlap or not any(_overlaps(box, b, cfg.gap) for b in boxes):
                    break
            else:
                break  # this object did not fit: start the scene again
            boxes.append(box)
            objects.append({"shape": shape, "color": color, "size": size, "bbox": [round(v, 4) for v in box],
                            "center": [round(cx, 4), round(cy, 4)], "side": round(side, 4),
                            "rotation": round(math.degrees(angle), 2)})
        if len(objects) == n:
            break
    else:
        raise RuntimeError(f"could not place {n} objects without overlap in scene {scene_id}; lower max_objects")
    objects.sort(key=reading_order)
    scene = {"id": scene_id, "image": image, "width": cfg.image_size, "height": cfg.image_size,
             "background": BACKGROUND[0], "objects": objects}
    scene["captions"] = captions(scene, rng)
    return scene


def render(scene: dict) -> Image.Image:
    """Draw the scene at SUPERSAMPLE x the size and box-downsample: smooth edges, same bytes every time."""
    big = scene["width"] * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND[1])
    draw = ImageDraw.Draw(img)
    for obj in scene["objects"]:
        fill = COLORS[obj["color"]]
        cx, cy = obj["center"][0] * big, obj["center"][1] * big
        pts = shape_outline(obj["shape"], obj["side"], math.radians(obj["rotation"]))
        if pts is None:
            r = obj["side"] / 2 * big
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon([(cx + x * big, cy + y * big) for x, y in pts], fill=fill)
    return img.resize((scene["width"], scene["height"]), Image.BOX)


def save_png(img: Image.Image, path: str) -> None:
    """PNG without metadata chunks (no time stamps), so the same scene always gives the same bytes."""
    tmp = f"{path}.tmp{os.getpid()}.png"
    img.save(tmp, format="PNG", compress_level=6)
    os.replace(tmp, path)


def places_sentence(objects: list[dict]) -> str:
    """Where each object is, in words: "There is a red circle at the top left, ...". The place is the 3x3 grid cell
    of its box centre, the point the teacher's positions use too."""
    where = []
    for o in objects:
        place = position_name((o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2, margin=0)
        at = "in the center" if place == "center" else f"at the {place}"
        where.append(f"{article(o['color'] + ' ' + o['shape'])} {at}")
    return f"There is {join(where)}."


def captions(scene: dict, rng: random.Random) -> list[str]:
    """Three captions in varied wording; every one lists each object with its colour and shape."""
    objs = scene["objects"]
    named = [article(f"{o['size']} {o['color']} {o['shape']}") for o in objs]
    plain = [article(f"{o['color']} {o['shape']}") for o in objs]
    count = f"{len(objs)} {'shape' if len(objs) == 1 else 'shapes'}"
    options = [
        f"{join(named)[0].upper()}{join(named)[1:]} on a {scene['background']} background.",
        f"A picture of {count}: {join(plain)}.",
        places_sentence(objs),
        f"{count[0].upper()}{count[1:]} on a plain {scene['background']} background: {join(named)}.",
    ]
    rng.shuffle(options)
    return options[:3]


def scene_in_words(scene: dict) -> str:
    """The scene as a text-only LLM reads it where the image would be: what the teacher sees, captions and boxes,
    in words. The captions name every object's colour, shape and size; a scene whose three captions left out the
    places sentence gets it added, since the boxes say where everything is."""
    places = places_sentence(scene["objects"])
    return " ".join(scene["captions"] + ([] if places in scene["captions"] else [places]))


def vocabulary(cfg: WorldConfig) -> list[str]:
    """Every object name the world can produce; the teacher draws its negatives ('Is there a ...?' -> no) from it."""
    return [f"{c} {s}" for c in cfg.colors for s in cfg.shapes]


def answer_statistics(questions: list[dict]) -> dict:
    """Counts per question type and answer, and the majority-answer rate: the accuracy of a blind model that
    always says the most common answer of each type."""
    per_type = defaultdict(Counter)
    for q in questions:
        per_type[q["question_type"]][q["answer"]] += 1
    stats = {}
    for qtype, answers in sorted(per_type.items()):
        total = sum(answers.values())
        stats[qtype] = {"count": total, "answers": dict(answers.most_common()),
                        "majority_rate": round(answers.most_common(1)[0][1] / total, 3)}
    return stats


def print_statistics(name: str, stats: dict) -> None:
    print(f"{name}: {sum(s['count'] for s in stats.values())} short-answer questions")
    for qtype, s in stats.items():
        answers = ", ".join(f"{a}:{c}" for a, c in s["answers"].items())
        print(f"  {qtype:12s} n={s['count']:6d}  majority-answer rate {s['majority_rate']:.3f}  [{answers}]")


def generate_dataset(out_dir: str, n_train: int, n_test: int, seed: int = 0, image_size: int = 64,
                     cfg: WorldConfig | None = None, quiet: bool = False, vqa_rounds: int = 3) -> dict:
    """Sample, render and annotate n_train + n_test scenes; write the files listed in the module docstring.
    Each train image's short-answer sample asks `vqa_rounds` rounds of questions (see instruct_data.make_instruct_data).

    Returns the statistics dict that is also written to `stats.json`."""
    cfg = cfg or WorldConfig(image_size=image_size)
    vocab = vocabulary(cfg)
    scenes = {}
    for split, n in (("train", n_train), ("test", n_test)):
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
        rng = random.Random(f"{seed}:{split}")  # str seeds hash with sha512: the same on every machine and run
        scenes[split] = []
        for i in tqdm(range(n), desc=f"{split} scenes", disable=quiet):
            scene_id = f"shapes_{split}_{i:06d}"
            scene = sample_scene(rng, cfg, scene_id, f"images/{split}/{scene_id}.png")
            save_png(render(scene), os.path.join(out_dir, scene["image"]))
            scenes[split].append(scene)
        write_json(scenes[split], os.path.join(out_dir, f"scenes_{split}.json"))

    items = [{"id": s["id"], "image": s["image"], "context": symbolic_context(s)} for s in scenes["train"]]
    teacher = RuleTeacher(vocab)
    stage1 = stage1_pairs(items, seed)
    train_balancer = AnswerBalancer(random.Random(f"{seed}:train-questions"))
    stage2 = make_instruct_data(items, teacher, seed, vocabulary=vocab, balancer=train_balancer, progress=not quiet,
                                vqa_rounds=vqa_rounds)
    write_json(stage1, os.path.join(out_dir, "stage1.json"))
    write_json(stage2, os.path.join(out_dir, "stage2.json"))

    # Held-out questions: every question type the test scene allows, answers balanced across the split; every
    # other scene's questions are worded with held-out phrasings (phrasings.py), which no training file contains.
    balancer, test = AnswerBalancer(random.Random(f"{seed}:test-questions")), []
    for i, s in enumerate(scenes["test"]):
        phrasing = "heldout" if i % 2 else "seen"
        for k, q in enumerate(short_answer_questions(symbolic_context(s)["boxes"], vocab, balancer,
                                                     heldout=phrasing == "heldout")):
            test.append({"id": f"{s['id']}_q{k}", "image": s["image"], "question": q["question"],
                         "answer": q["answer"], "question_type": q["question_type"], "phrasing": phrasing,
                         **({"choices": q["choices"]} if "choices" in q else {})})
    write_json(test, os.path.join(out_dir, "test.json"))
    write_json(make_bench(scenes["test"][:BENCH_IMAGES], vocab, seed), os.path.join(out_dir, "bench.json"))

    stats = {"train_vqa": answer_statistics(train_balancer.asked), "test": answer_statistics(test),
             "files": {"stage1": len(stage1), "stage2": dict(Counter(e["id"].rsplit("_", 1)[1] for e in stage2)),
                       "test": len(test)}}
    write_json(stats, os.path.join(out_dir, "stats.json"))
    if not quiet:
        print(f"wrote {out_dir}: {n_train} train + {n_test} test scenes, stage1 {len(stage1)}, "
              f"stage2 {stats['files']['stage2']}")
        print_statistics("stage2 short-answer turns (train)", stats["train_vqa"])
        print_statistics("test.json (held out)", stats["test"])
    return stats


def make_bench(scenes: list[dict], vocab: list[str], seed: int) -> list[dict]:
    """LLaVA-Bench-style set: for each scene one conv, one detail and one complex question with a reference answer;
    every other scene's questions in held-out phrasings."""
    bench = []
    for i, s in enumerate(scenes):
        ctx, teacher = symbolic_context(s), RuleTeacher(vocab, heldout=bool(i % 2))
        for category, write in (("conv", teacher.conversation), ("detail", teacher.detail),
                                ("complex", teacher.complex)):
            turns = write(ctx, random.Random(f"{seed}:bench:{s['id']}:{category}"))
            question = turns[0]["value"].replace("<image>\n", "")
            bench.append({"id": f"{s['id']}_{category}", "image": s["image"], "category": category,
                          "phrasing": "heldout" if teacher.heldout else "seen",
                          "question": question, "reference": turns[1]["value"], "context": ctx, "scene": s})
    return bench


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=cli.non_negative_int, default=5000)
    p.add_argument("--test", type=cli.non_negative_int, default=500)
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--image-size", type=cli.positive_int, default=64)
    p.add_argument("--max-objects", type=cli.positive_int, default=4)
    p.add_argument("--vqa-rounds", type=cli.non_negative_int, default=3, help="rounds of short-answer questions per train image")
    p.add_argument("--rotate", action="store_true", help="rotate polygons by random angles")
    p.add_argument("--allow-overlap", action="store_true", help="let objects overlap (default: apart)")
    add_teacher_arguments(p, url_default=None)
    args = p.parse_args(argv)
    if args.image_size < 8:
        p.error(f"argument --image-size: must be >= 8, got {args.image_size}")
    cfg = WorldConfig(image_size=args.image_size, max_objects=args.max_objects, rotate=args.rotate,
                      allow_overlap=args.allow_overlap)
    generate_dataset(args.out, args.train, args.test, seed=args.seed, cfg=cfg, vqa_rounds=args.vqa_rounds)
    if args.llm_teacher:
        teach_world(args, args.out)


if __name__ == "__main__":
    cli.run(main)
