"""What a frozen vision tower's patch features know about each object: linear probes for shape, colour and position.

    python benchmarks/probe_tower.py --clip weights/tiny/tiny-clip --data data/shapes
    python benchmarks/probe_tower.py --clip weights/tiny/tiny-clip --random     # same config, untrained: the floor
    python benchmarks/probe_tower.py --llava checkpoints/tiny/final                 # what the trained LLM receives
    python benchmarks/probe_tower.py --clip weights/tiny/tiny-clip --per-patch  # what one image token knows

LLaVA reads the tower's patch features at `--layer` (-2) and never trains the tower, so whatever these features do not
carry, stage 2 cannot learn. For each object of a scene we average the patch features inside its box (the patches that
`tiny_clip.object_regions` picks), then fit one linear classifier per attribute on train scenes and score it on the
held-out scenes. Chance: shape 1/6, colour 1/11, position 1/9 (the 3x3 grid the teacher names, every object labelled).
`--per-patch` probes each patch inside a box on its own instead: to answer "what colour is the star?" an attention
head must find the star's tokens among the 64, by what each single token carries. (A patch at the edge of a box
cannot tell which of two neighbouring places the object's centre is in, so position per patch is partly ambiguous.)

A probe standardises every direction first, so it finds an attribute however quiet it is. The LLM does not: its
RMSNorm scales each token as a whole. So each attribute's share of the features' variance is printed too
(variance_shares); after stage 2, colour is most of it (docs/EXPERIMENTS.md: what stage 2 does to the projector).
"""
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from llava_mini import cli  # noqa: E402
from llava_mini.loading import weights  # noqa: E402
from llava_mini.model.clip import CLIPVisionModel  # noqa: E402
from weights.base_training import init_weights  # noqa: E402
from weights.tiny_clip import probe_tower  # noqa: E402


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default="weights/tiny/tiny-clip", help="CLIP (or CLIP vision) checkpoint folder")
    p.add_argument("--data", default="data/shapes", help="shapes world folder")
    p.add_argument("--train-scenes", type=cli.positive_int, default=2000)
    p.add_argument("--layer", type=int, default=-2, help="hidden-states index LLaVA reads")
    p.add_argument("--random", action="store_true", help="probe an untrained tower of the same config instead")
    p.add_argument("--llava", help="probe what a trained LLaVA model's LLM receives (its projector's outputs)")
    p.add_argument("--per-patch", action="store_true", help="probe each patch inside an object's box on its own, "
                                                            "not their mean per object")
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
    result = probe_tower(tower, args.data, args.train_scenes, args.layer, encode, per_patch=args.per_patch)
    print(f"{'untrained' if args.random else what}: per {'patch' if args.per_patch else 'object'}, held-out "
          "linear-probe accuracy and the share of the features' variance the attribute explains")
    for k, v in result.items():
        print(f"  {k:9s} {v['probe']:6.1%}   variance share {v['share']:6.1%}")
    return result


if __name__ == "__main__":
    cli.run(main)
