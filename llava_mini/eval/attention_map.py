"""Seeing what the model sees: which image patches the answer tokens attended to, drawn over the image.

    python -m llava_mini.eval.attention_map --model checkpoints/tiny/final \
        --image data/shapes/images/test/shapes_test_000000.png --question "What colour is the circle?" --out map.png \
        [--layers all|-1|0,2|1:3] [--heads all|0,1]

How the map is made:
1. The model answers the question (greedy; or pass --answer to score a given answer instead).
2. One forward pass over prompt + answer with eager attention returns the attention probabilities of every
   layer, (heads, T, T). The rows we read are the queries that *produced* the answer tokens: the last prompt
   token (it predicts the first answer token) up to the second-to-last answer token.
3. From those rows we keep the columns of the image positions, average over the chosen layers, heads and rows,
   and renormalise over the patches so the map sums to one: "of the attention that went to the image, which
   share went where". (Most attention goes to text tokens and to the first token; that is normal.)
4. The (num_patches,) vector is reshaped to the patch grid, upsampled to the region of the image the model saw,
   coloured with a matplotlib colour map and blended over the image: the PNG has the image's size.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from llava_mini import cli
from llava_mini.data.conversation import IGNORE_INDEX, TEMPLATES, get_template, tokenize_conversation, tokenize_prompt


def parse_index_list(spec: str | None, n: int, what: str) -> list[int]:
    """'all' / None -> 0..n-1; '-1' -> [n-1]; '0,2' -> [0, 2]; '1:3' -> [1, 2]. Out of range is an error."""
    if spec is None or spec == "all":
        return list(range(n))
    out = []
    for part in spec.split(","):
        if ":" in part:
            lo, hi = (int(x) if x else None for x in part.split(":"))
            out.extend(range(n)[slice(lo, hi)])
        else:
            i = int(part)
            if not -n <= i < n:
                raise ValueError(f"{what} {i} does not exist: the model has {n} {what}s (0..{n - 1}, or negative)")
            out.append(i % n)
    if not out:
        raise ValueError(f"--{what}s {spec!r} selects no {what}")
    return out


def image_patch_weights(attentions, query_positions, image_positions, layers=None, heads=None) -> torch.Tensor:
    """Average attention from the answer queries to the image patches.

    attentions: per layer, (1, H, T, S) probabilities. query_positions: rows to read (the answer's queries).
    image_positions: the key columns that hold the image's patch tokens, in patch order.
    Returns (num_patches,) float32 summing to 1."""
    layers = range(len(attentions)) if layers is None else layers
    picked = []
    for layer in layers:
        probs = attentions[layer][0].float()                              # (H, T, S)
        if heads is not None:
            probs = probs[heads]                                          # (h, T, S)
        picked.append(probs[:, query_positions][:, :, image_positions])   # (h, Q, P)
    weights = torch.stack(picked).mean(dim=(0, 1, 2))                     # (P,)
    total = weights.sum()
    if total <= 0:
        raise ValueError("the chosen layers/heads put no attention at all on the image")
    return weights / total


def heat_on_image(weights: torch.Tensor, image_size: tuple[int, int], aspect: str = "pad",
                  smooth: bool = True) -> np.ndarray:
    """(P,) patch weights -> (H, W) array over the original image, in [0, 1] (min-max scaled).

    The patch grid covers the square the model saw: with "pad" the image sits centred in a square canvas
    (so the canvas's padding is cut away again), with "crop" it is the centred square of the short side
    (outside it the model saw nothing: 0)."""
    grid = math.isqrt(weights.numel())
    if grid * grid != weights.numel():
        raise ValueError(f"{weights.numel()} patch weights do not form a square grid")
    # Min-max scaling: the least attended patch is 0, the most attended 1. A nearly flat map therefore still shows
    # contrast; the CLI prints the peak share next to the uniform one so the viewer can tell how peaked it is.
    span = (weights.max() - weights.min()).clamp_min(1e-12)
    heat = ((weights - weights.min()) / span).reshape(grid, grid).cpu().numpy().astype(np.float32)
    w, h = image_size
    side = max(w, h) if aspect == "pad" else min(w, h)
    resample = Image.BICUBIC if smooth else Image.NEAREST
    square = np.asarray(Image.fromarray(heat, mode="F").resize((side, side), resample))
    if aspect == "pad":           # the canvas is larger than the image: cut the image's part out
        x0, y0 = (side - w) // 2, (side - h) // 2
        return np.clip(square[y0:y0 + h, x0:x0 + w], 0, 1)
    out = np.zeros((h, w), np.float32)   # the crop is smaller than the image: put it back in the middle
    x0, y0 = (w - side) // 2, (h - side) // 2
    out[y0:y0 + side, x0:x0 + side] = np.clip(square, 0, 1)
    return out


def overlay(image: Image.Image, weights: torch.Tensor, aspect: str = "pad", colormap: str = "inferno",
            smooth: bool = True, scale: int = 1) -> Image.Image:
    """Blend a colour map of the weights over the image. Where attention is high the colour dominates, where it
    is low the image shows through, so the picture stays readable. `scale` enlarges the result (for a
    projector: 64 px images are tiny on a wall); 1 keeps the image's size."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import colormaps

    image = image.convert("RGB")
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.LANCZOS)
    heat = heat_on_image(weights, image.size, aspect, smooth)                       # (H, W) in [0, 1]
    colours = colormaps[colormap](heat)[..., :3]                                     # (H, W, 3) in [0, 1]
    alpha = (0.75 * heat ** 0.7)[..., None]          # 0 where nothing was attended; never fully opaque
    base = np.asarray(image, np.float32) / 255.0
    blended = (1 - alpha) * base + alpha * colours
    return Image.fromarray((blended * 255).round().clip(0, 255).astype(np.uint8))


def answer_attention(model, tokenizer, image: Image.Image, question: str, template, answer: str | None = None,
                     max_new_tokens: int = 32, layers=None, heads=None) -> tuple[str, torch.Tensor]:
    """(answer text, (num_patches,) weights summing to 1) for one image and question. With `answer=None` the
    model answers greedily first; otherwise the given answer is scored (teacher forcing)."""
    from llava_mini.data.conversation import stop_token_ids
    from llava_mini.data.images import preprocess_image

    template = get_template(template) if isinstance(template, str) else template
    config = model.config
    device = next(model.parameters()).device
    prompt = tokenize_prompt(tokenizer, ["<image>\n" + question], template)
    pixel_values = preprocess_image(image, config.vision_config, config.image_aspect_ratio)[None]
    pixel_values = pixel_values.to(device, next(model.vision_tower.parameters()).dtype)
    if answer is None:
        out = model.generate(torch.tensor([prompt], device=device), pixel_values, max_new_tokens=max_new_tokens,
                             stop_token_ids=stop_token_ids(tokenizer, template))
        answer_ids = out.tokens[0]
    else:   # tokenized as the template has it after the prompt (e.g. " red</s>"), without the stop token
        ids, labels = tokenize_conversation(tokenizer, ["<image>\n" + question, answer], template)
        assert ids[:len(prompt)] == prompt, "the prompt must be a prefix of the whole conversation"
        answer_ids = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX][:-1]
    if not answer_ids:
        raise ValueError("the answer is empty: there are no answer tokens whose attention could be shown")

    with torch.no_grad():
        out = model(torch.tensor([prompt + answer_ids], device=device), pixel_values, output_attentions=True)
    # Positions inside the LLM: the placeholder at `p` became num_image_tokens positions p .. p + N - 1.
    p, n_image = prompt.index(config.image_token_index), config.num_image_tokens
    image_positions = list(range(p, p + n_image))[-config.vision_config.num_patches:]   # drop CLS ("full")
    prompt_len = len(prompt) - 1 + n_image
    queries = list(range(prompt_len - 1, prompt_len - 1 + len(answer_ids)))    # the rows that produced the answer
    weights = image_patch_weights(out.attentions, queries, image_positions, layers, heads)
    return tokenizer.decode(answer_ids).strip(), weights


def main(argv=None):
    p = cli.ArgumentParser(description="Overlay on an image where the answer's tokens looked.")
    p.add_argument("--model", required=True, help="checkpoint folder")
    cli.add_checkpoint_arguments(p)
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--answer", help="score this answer instead of generating one")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--layers", default="all", help="'all', '-1', '0,2' or '1:3' (default all)")
    p.add_argument("--heads", default="all", help="same syntax as --layers")
    p.add_argument("--colormap", default="inferno", help="any matplotlib colour map name (inferno, jet, viridis...)")
    p.add_argument("--blocky", action="store_true", help="show patches as squares instead of smoothing")
    p.add_argument("--scale", type=cli.positive_int, default=1, help="enlarge the PNG this many times (for projecting)")
    p.add_argument("--template", choices=sorted(TEMPLATES), help="override the template stored with the checkpoint")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from llava_mini.data.images import load_image
    from llava_mini.loading.model_folder import load_checkpoint
    model, tokenizer, template = load_checkpoint(args.model, args.vision_tower, args.device,
                                                 model_base=args.model_base)
    text_config = model.config.text_config
    layers = parse_index_list(args.layers, text_config.num_hidden_layers, "layer")
    heads = parse_index_list(args.heads, text_config.num_attention_heads, "head")
    image = load_image(args.image)
    answer, weights = answer_attention(model, tokenizer, image, args.question, args.template or template,
                                       answer=args.answer, layers=layers, heads=heads)
    picture = overlay(image, weights, model.config.image_aspect_ratio, args.colormap, not args.blocky, args.scale)
    tmp = f"{args.out}.tmp.png"
    picture.save(tmp)
    os.replace(tmp, args.out)
    grid = math.isqrt(weights.numel())
    top = int(weights.argmax())
    print(f"answer: {answer}")
    print(f"most attended patch: row {top // grid}, column {top % grid} of {grid}x{grid} "
          f"({weights.max():.1%} of the image attention; uniform would be {1 / weights.numel():.1%})")
    print(f"wrote {args.out} ({picture.width}x{picture.height})")


if __name__ == "__main__":
    cli.run(main)
