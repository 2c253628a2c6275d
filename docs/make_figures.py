"""Make the figures of the README and the lessons as small PNGs in docs/img/. Deterministic: the same inputs give
the same bytes (no time stamps in the files), so a rerun that changes nothing leaves git clean.

    python docs/make_figures.py                              # the three that need no run: architecture, world, splice
    python docs/make_figures.py --run checkpoints/tiny --data data/shapes      # + loss curves and an attention map

Figures:
  architecture.png   image -> frozen CLIP -> layer -2 patches -> projector -> spliced into the tokens -> LLaMA -> logits
  world_scene.png    a shapes-world scene beside what the text-only teacher sees of it: captions and boxes
  splice.png         the token sequence before and after the one <image> placeholder becomes the image's vectors
  loss_curves.png    the default run's training loss, stage 1 and stage 2 (from each stage's metrics.csv)
  attention_map.png  where the trained model looked while answering a held-out question
"""
from __future__ import annotations

import csv
import os
import random
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from llava_mini import cli  # noqa: E402

OUT = os.path.join(REPO, "docs", "img")
PNG = {"metadata": {"Software": None}, "dpi": 110}     # no version string: the same figure gives the same bytes

FROZEN, TRAINED, DATA = "#cfd8e3", "#f6c28b", "#e8e8e8"


def box(ax, x, y, w, h, text, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="#333333", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, x0, y0, x1, y1):
    ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "lw": 1.2, "color": "#333333"})


def architecture(path: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.3))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 3.3)
    ax.axis("off")
    box(ax, 0.1, 1.9, 1.2, 0.9, "image\n(3, 336, 336)\nclassroom: 64 px", DATA, 8)
    box(ax, 1.7, 1.9, 1.6, 0.9, "CLIP ViT\n(frozen)", FROZEN)
    box(ax, 3.7, 1.9, 1.6, 0.9, "layer -2 patches\n(576, 1024), no CLS\nclassroom: (64, 64)", DATA, 8)
    box(ax, 5.7, 1.9, 1.6, 0.9, "projector\nLinear-GELU-Linear\n(576, 4096)", TRAINED, 8)
    box(ax, 0.1, 0.3, 3.2, 0.9, "text token ids:\nUSER: <image>\\nWhat colour is\nthe star? ASSISTANT:", DATA, 8)
    box(ax, 3.7, 0.3, 1.6, 0.9, "token embeddings\n(T, 4096)", DATA, 8)
    box(ax, 5.7, 0.3, 1.6, 0.9, "splice: <image> ->\n576 image vectors", DATA, 8)
    box(ax, 7.7, 0.3, 1.0, 0.9, "LLaMA\n(Vicuna)", TRAINED)
    box(ax, 9.0, 0.3, 0.9, 0.9, "logits\n\"blue\"", DATA, 8)
    for x0, x1 in ((1.3, 1.7), (3.3, 3.7), (5.3, 5.7)):
        arrow(ax, x0, 2.35, x1, 2.35)
    arrow(ax, 3.3, 0.75, 3.7, 0.75)
    arrow(ax, 5.3, 0.75, 5.7, 0.75)
    arrow(ax, 6.5, 1.9, 6.5, 1.2)
    arrow(ax, 7.3, 0.75, 7.7, 0.75)
    arrow(ax, 8.7, 0.75, 9.0, 0.75)
    ax.text(7.7, 2.75, "trains in stage 1: projector\ntrains in stage 2: projector + LLaMA\nnever trains: CLIP",
            fontsize=8, va="top")
    ax.add_patch(Rectangle((7.7, 1.95), 0.25, 0.15, fc=TRAINED, ec="#333333"))
    ax.add_patch(Rectangle((8.05, 1.95), 0.25, 0.15, fc=FROZEN, ec="#333333"))
    ax.text(8.4, 2.02, "trained / frozen", fontsize=7, va="center")
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)


def world_scene(path: str) -> None:
    from llava_mini.synth.world import WorldConfig, render, sample_scene, symbolic_context
    scene = sample_scene(random.Random(7), WorldConfig(image_size=64), "example", "example.png")
    image = render(scene).resize((256, 256), 0)                 # nearest: the pixels the tower sees, enlarged
    context = symbolic_context(scene)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 2]})
    left.imshow(image)
    for o in scene["objects"]:
        x1, y1, x2, y2 = (v * 256 for v in o["bbox"])
        left.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="black", lw=1, ls="--"))
    left.set_title("the image (64 px, enlarged)", fontsize=9)
    left.axis("off")
    right.axis("off")
    captions = [textwrap.fill(c, 70, initial_indent="  ", subsequent_indent="    ") for c in context["captions"]]
    text = "Captions:\n" + "\n".join(captions) + "\n\nBoxes (x1, y1, x2, y2):\n" + \
        "\n".join(f"  {b}" for b in context["boxes"])
    right.text(0, 0.95, text, va="top", fontsize=9, family="monospace")
    right.set_title("what the text-only teacher sees", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)


def splice(path: str) -> None:
    before = ["<s>", "USER:", "<image>", "\\n", "What", "colour", "...?", "ASSISTANT:", "blue", "</s>"]
    trained = {"blue", "</s>"}
    fig, ax = plt.subplots(figsize=(10, 2.6))
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 2.6)
    ax.axis("off")
    ax.text(0, 2.35, "token ids (one placeholder per image)", fontsize=9)
    for i, t in enumerate(before):
        color = TRAINED if t in trained else (FROZEN if t == "<image>" else DATA)
        box(ax, 0.1 + i * 1.15, 1.45, 1.05, 0.6, t, color, 7)
    ax.text(0, 1.05, "inside the LLM (the placeholder becomes num_image_tokens vectors; their labels are -100)",
            fontsize=9)
    x = 0.1
    for t in before:
        if t == "<image>":
            for k in range(5):
                box(ax, x, 0.15, 0.5, 0.6, "..." if k == 3 else f"v{k if k < 3 else 575}", FROZEN, 7)
                x += 0.58
            continue
        box(ax, x, 0.15, 1.05, 0.6, t, TRAINED if t in trained else DATA, 7)
        x += 1.15
    ax.add_patch(Rectangle((13.4, 2.25), 0.3, 0.2, fc=TRAINED, ec="#333333"))
    ax.text(13.8, 2.35, "carries a loss", fontsize=8, va="center")
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)


def read_losses(path: str) -> tuple[list[int], list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def loss_curves(run: str, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for ax, (name, csv_path) in zip(axes, (("stage 1: projector only, captions", os.path.join(run, "stage1")),
                                           ("stage 2: projector + LLM, instructions", run))):
        steps, losses = read_losses(os.path.join(csv_path, "metrics.csv"))
        k = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, losses, alpha=0.3, lw=0.8)
        ax.plot(steps, smooth, lw=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)


def attention_figure(run: str, data: str, path: str, image_id: str = "shapes_test_000003",
                     question: str = "What color is the star?") -> None:
    """The README's chat example: where the trained model looked while it answered."""
    import torch

    from llava_mini.data.images import load_image
    from llava_mini.eval.attention_map import answer_attention, overlay
    from llava_mini.jsonio import read_json
    from llava_mini.loading.model_folder import load_checkpoint
    torch.manual_seed(0)
    model, tokenizer, template = load_checkpoint(os.path.join(run, "final"))
    scene = next(s for s in read_json(os.path.join(data, "scenes_test.json")) if s["id"] == image_id)
    image = load_image(os.path.join(data, scene["image"]))
    answer, weights = answer_attention(model, tokenizer, image, question, template)
    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3.3))
    a.imshow(image.resize((256, 256), 0))
    a.set_title(f"{scene['image']}", fontsize=8)
    b.imshow(overlay(image, weights, model.config.image_aspect_ratio, scale=4))
    b.set_title(f"{question} -> {answer}", fontsize=8)
    for ax in (a, b):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, **PNG)
    plt.close(fig)
    print(f"attention map: {scene['image']}: {question} -> {answer}")


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a pipeline run folder (checkpoints/tiny): loss curves and an attention map")
    p.add_argument("--data", default="data/shapes", help="the world data of that run (for the attention map)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    made = ["architecture.png", "world_scene.png", "splice.png"]
    architecture(os.path.join(args.out, made[0]))
    world_scene(os.path.join(args.out, made[1]))
    splice(os.path.join(args.out, made[2]))
    if args.run:
        loss_curves(args.run, os.path.join(args.out, "loss_curves.png"))
        attention_figure(args.run, args.data, os.path.join(args.out, "attention_map.png"))
        made += ["loss_curves.png", "attention_map.png"]
    print(f"wrote {', '.join(made)} in {args.out}")


if __name__ == "__main__":
    cli.run(main)
