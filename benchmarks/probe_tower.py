"""What a frozen vision tower's patch features know about each object: linear probes for shape, colour and position.

    python benchmarks/probe_tower.py --clip weights/tiny/tiny-clip --data data/shapes
    python benchmarks/probe_tower.py --clip weights/tiny/tiny-clip --random     # same config, untrained: the floor
    python benchmarks/probe_tower.py --llava checkpoints/tiny/final                 # what the trained LLM receives
    python benchmarks/probe_tower.py --clip weights/tiny/tiny-clip --per-patch  # what one image token knows
    python benchmarks/probe_tower.py --llava checkpoints/tiny/stage1/final --lookup   # can a head find an object?

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

`--lookup` asks the question a look-up needs answered: can ONE attention head, told the named shape (or colour, or
object), find it among the 64 tokens and read its other attribute? It trains that head alone on the train scenes
(tiny_clip.attention_lookup_probe) and scores held-out scenes that offer two or more answers, against picking one of
them. If the head succeeds where the trained LLaVA answers at picking, the tokens are not what holds it back.
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
from weights.tiny_clip import probe_lookups, probe_tower  # noqa: E402


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
    p.add_argument("--lookup", action="store_true", help="train one attention head per look-up (the colour of a "
                                                         "shape, the shape of a colour, the place of an object)")
    p.add_argument("--steps", type=cli.positive_int, default=1500, help="--lookup: the head's training steps")
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
    if args.lookup:
        result = probe_lookups(tower, args.data, args.train_scenes, args.layer, encode, args.steps)
        print(f"{'untrained' if args.random else what}: one attention head, {args.steps} steps, held-out look-ups "
              "(scenes offering two or more answers)")
        for k, v in result.items():
            print(f"  {k:19s} {v['head']:6.1%}   picking {v['picking']:6.1%}   ({v['n']} questions)")
        return result
    result = probe_tower(tower, args.data, args.train_scenes, args.layer, encode, per_patch=args.per_patch)
    print(f"{'untrained' if args.random else what}: per {'patch' if args.per_patch else 'object'}, held-out "
          "linear-probe accuracy and the share of the features' variance the attribute explains")
    for k, v in result.items():
        print(f"  {k:9s} {v['probe']:6.1%}   variance share {v['share']:6.1%}")
    return result


if __name__ == "__main__":
    cli.run(main)
