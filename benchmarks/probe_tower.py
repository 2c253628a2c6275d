"""What a frozen vision tower's patch features know about each object: linear probes for shape, colour and position.

    python benchmarks/probe_tower.py --clip checkpoints/base/tiny-clip --data data/shapes
    python benchmarks/probe_tower.py --clip checkpoints/base/tiny-clip --random     # same config, untrained: the floor
    python benchmarks/probe_tower.py --llava checkpoints/tiny/final                 # what the trained LLM receives

LLaVA reads the tower's patch features at `--layer` (-2) and never trains the tower, so whatever these features do not
carry, stage 2 cannot learn. For each object of a scene we average the patch features inside its box (the patches that
`tiny_clip.object_regions` picks), then fit one linear classifier per attribute on train scenes and score it on the
held-out scenes. Chance: shape 1/6, colour 1/11, position 1/9 (the 3x3 grid the teacher names, every object labelled).

A probe standardises every direction first, so it finds an attribute however quiet it is. The LLM does not: its
RMSNorm scales each token as a whole. So each attribute's share of the features' variance is printed too
(variance_shares); after stage 2, colour is most of it (docs/EXPERIMENTS.md: what stage 2 does to the projector).
"""
import argparse
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from llava_mini.jsonio import read_json  # noqa: E402
from llava_mini.loading import weights  # noqa: E402
from llava_mini.model.clip import CLIPVisionModel  # noqa: E402
from llava_mini.synth import world  # noqa: E402
from llava_mini.synth.teacher import POSITION_NAMES, position_name  # noqa: E402
from weights.make_tiny import init_weights, load_images  # noqa: E402
from weights.tiny_clip import object_regions  # noqa: E402


@torch.no_grad()
def object_features(tower: CLIPVisionModel, images: torch.Tensor, scenes: list[dict], layer: int,
                    batch_size: int = 256, encode=None) -> tuple[torch.Tensor, dict]:
    """Per-object mean patch feature at `layer`: (n_objects, hidden), and labels {attribute: (n_objects,)}.
    `encode` (images -> (B, P, hidden)) replaces the tower's features, e.g. a LLaVA model's projector outputs."""
    config = tower.config
    grid = config.image_size // config.patch_size
    features, labels = [], {"shape": [], "colour": [], "position": []}
    for start in range(0, len(scenes), batch_size):
        chunk = images[start:start + batch_size]
        patches = encode(chunk) if encode else tower.select_features(chunk, layer=layer)     # (B, P, hidden)
        for b, scene in enumerate(scenes[start:start + batch_size]):
            masks, _ = object_regions(scene, grid)                                           # (n_objects, P)
            features.append(masks @ patches[b] / masks.sum(1, keepdim=True))                 # (n_objects, hidden)
            for o in scene["objects"]:
                labels["shape"].append(world.SHAPES.index(o["shape"]))
                labels["colour"].append(list(world.COLORS).index(o["color"]))
                labels["position"].append(POSITION_NAMES.index(position_name(*o["center"], margin=0)))
    return torch.cat(features), {k: torch.tensor(v) for k, v in labels.items()}


def linear_probe(train_x, train_y, test_x, test_y, n_classes: int, steps: int = 300, seed: int = 0) -> float:
    """Multinomial logistic regression (full-batch Adam on standardised features); returns held-out accuracy."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = torch.nn.Linear(train_x.shape[1], n_classes)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return (probe(test_x).argmax(1) == test_y).float().mean().item()


def variance_shares(x: torch.Tensor, labels: dict) -> dict:
    """Per attribute, the share of the features' total variance that its class means explain (between-class
    variance / total variance, in [0, 1]). Unlike a probe, which standardises every direction, this sees the scale
    the LLM sees: after its RMSNorm a direction that holds 1% of the variance is 1% of the signal."""
    x = x - x.mean(0)                                                                   # (n_objects, hidden)
    total = (x ** 2).sum(1).mean()
    shares = {}
    for name, y in labels.items():
        classes = y.unique()
        means = torch.stack([x[y == c].mean(0) for c in classes])                       # (n_classes, hidden)
        weights = torch.stack([(y == c).float().mean() for c in classes])               # (n_classes,)
        shares[name] = float((weights * (means ** 2).sum(1)).sum() / total)
    return shares


def probe_tower(tower: CLIPVisionModel, data_dir: str, n_train: int = 2000, layer: int = -2, encode=None) -> dict:
    """Per attribute, {"probe": held-out linear-probe accuracy, "share": variance_shares on the held-out objects},
    for the objects of `data_dir`'s scenes (of `encode`'s features if given, see object_features)."""
    train_scenes = read_json(os.path.join(data_dir, "scenes_train.json"))[:n_train]
    test_scenes = read_json(os.path.join(data_dir, "scenes_test.json"))
    tower = tower.eval()
    train_x, train_y = object_features(tower, load_images(data_dir, train_scenes, tower.config), train_scenes, layer,
                                       encode=encode)
    test_x, test_y = object_features(tower, load_images(data_dir, test_scenes, tower.config), test_scenes, layer,
                                     encode=encode)
    classes = {"shape": len(world.SHAPES), "colour": len(world.COLORS), "position": len(POSITION_NAMES)}
    shares = variance_shares(test_x, test_y)
    return {k: {"probe": linear_probe(train_x, train_y[k], test_x, test_y[k], n), "share": shares[k]}
            for k, n in classes.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default="checkpoints/base/tiny-clip", help="CLIP (or CLIP vision) checkpoint folder")
    p.add_argument("--data", default="data/shapes", help="shapes world folder")
    p.add_argument("--train-scenes", type=int, default=2000)
    p.add_argument("--layer", type=int, default=-2, help="hidden-states index LLaVA reads")
    p.add_argument("--random", action="store_true", help="probe an untrained tower of the same config instead")
    p.add_argument("--llava", help="probe what a trained LLaVA model's LLM receives (its projector's outputs)")
    args = p.parse_args(argv)
    encode, what = None, f"{args.clip}, layer {args.layer}"
    if args.llava:
        model = weights.load_llava(args.llava).eval()
        tower, encode, what = model.vision_tower, model.encode_images, f"{args.llava}, projector outputs"
    else:
        tower = weights.load_clip(args.clip, vision_only=True)
    if args.random:
        torch.manual_seed(0)
        tower = init_weights(CLIPVisionModel(tower.config))
    result = probe_tower(tower, args.data, args.train_scenes, args.layer, encode)
    print(f"{'untrained' if args.random else what}: per object, held-out linear-probe accuracy and the share of "
          "the features' variance the attribute explains")
    for k, v in result.items():
        print(f"  {k:9s} {v['probe']:6.1%}   variance share {v['share']:6.1%}")
    return result


if __name__ == "__main__":
    main()
