"""The command line of train.py, and the stage recipe it selects: a preset's values with the flags given on top.

    args = parse_args(["--stage", "1", "--data", "data/shapes/stage1.json", ...])
    r = recipe(args)                     # StageRecipe(lr=..., batch_size=..., epochs=..., template=..., ...)
"""
from __future__ import annotations

import argparse
import dataclasses

from llava_mini import cli
from llava_mini.model.attention import BACKENDS
from llava_mini.training.optim import SCHEDULES
from llava_mini.training.recipes import PRESETS, StageRecipe


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.ArgumentParser(description="Train LLaVA (stage 1 or 2); no --stage runs the whole classroom pipeline.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), help="omit to run the whole pipeline")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--data", nargs="+", help="LLaVA JSON/JSONL file(s); several are mixed")
    p.add_argument("--image-root", nargs="+", help="image folder per data file (one for all is fine)")
    p.add_argument("--vision", help="stage 1: CLIP checkpoint folder (the frozen vision tower)")
    p.add_argument("--llm", help="stage 1: LLaMA checkpoint folder with tokenizer.json (or 'smollm2')")
    p.add_argument("--init", help="a LLaVA checkpoint folder to start from (stage 2: the stage-1 result)")
    p.add_argument("--out", help="output folder: checkpoint-NNNNNN/, final/, metrics.csv, loss.png")
    p.add_argument("--eval-data", help="held-out LLaVA JSON: its mean loss is reported at the start and at the end "
                                       "(and written to final/llava_mini.json)")
    p.add_argument("--eval-image-root", help="image folder of --eval-data (default: the first --image-root)")
    g = p.add_argument_group("overrides of the preset")
    g.add_argument("--lr", type=cli.positive_float)
    g.add_argument("--projector-lr", type=cli.non_negative_float, help="the projector's own learning rate (LLaVA's mm_projector_lr)")
    g.add_argument("--batch-size", type=cli.positive_int, help="global batch size")
    g.add_argument("--micro-batch-size", type=cli.positive_int, help="per process")
    g.add_argument("--epochs", type=cli.positive_float)
    g.add_argument("--max-steps", type=cli.positive_int, help="stop after this many optimizer steps (the schedule fits them)")
    g.add_argument("--max-length", type=cli.positive_int)
    g.add_argument("--lr-schedule", choices=sorted(SCHEDULES),
                   help="cosine (LLaVA's) or wsd (warmup, the peak rate held, then a linear decay to 0)")
    g.add_argument("--lr-decay-ratio", type=cli.fraction, help="wsd: the share of the steps that the decay takes")
    g.add_argument("--answer-weighting", type=cli.fraction,
                   help="each token of an n-token answer weighs n ** -this in the loss: 0 every token the same "
                        "(LLaVA), 0.5 square averaging, 1 every answer the same")
    g.add_argument("--template")
    g.add_argument("--projector-type")
    g.add_argument("--lora-r", type=cli.positive_int, help="stage 2: train LoRA adapters of this rank (and the "
                   "projector) instead of the whole LLM; saved in PEFT's format (llava_mini/loading/adapters.py)")
    g.add_argument("--lora-alpha", type=cli.positive_float, help="LoRA's scale is alpha / r (default: alpha = 2 r)")
    g.add_argument("--lora-dropout", type=cli.fraction, help="dropout on the adapters' input")
    g.add_argument("--lora-targets", nargs="+", metavar="NAME",
                   help="the LLM's linear layers that get adapters (default: all of them, lm_head excepted)")
    p.add_argument("--warmup-ratio", type=cli.fraction, default=0.03)
    p.add_argument("--weight-decay", type=cli.non_negative_float, default=0.0)
    p.add_argument("--max-grad-norm", type=cli.positive_float, default=1.0)
    p.add_argument("--group-by-length", action="store_true", help="batches of similar lengths (less padding)")
    p.add_argument("--pack", action="store_true", help="several samples per row (no padding), segment-id masks")
    p.add_argument("--compile", action="store_true", help="torch.compile the language model")
    p.add_argument("--attention", choices=BACKENDS, default="sdpa",
                   help="attention backend of both towers (flex: FlexAttention, trains on a GPU only in torch 2.13)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard parameters/grads/optimizer (FSDP2)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--save-every", type=cli.non_negative_int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) broken samples and images instead of stopping at the first one")
    p.add_argument("--seed", type=cli.non_negative_int, default=0)
    p.add_argument("--threads", type=cli.positive_int, help="CPU threads per process (default: cores / processes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("the default pipeline (no --stage)")
    g.add_argument("--quick", action="store_true", help="the pipeline at toy size (smoke test)")
    g.add_argument("--workdir", default=".", help="where data/ and checkpoints/ go")
    g.add_argument("--no-easyvqa", action="store_true", help="leave easy-VQA out of stage 2 and evaluation")
    g.add_argument("--make-bases", action="store_true",
                   help="train your own tiny bases (python weights/make_tiny.py, into checkpoints/base; about an "
                        "hour on 2 cores) instead of starting from the shipped weights/tiny")
    g.add_argument("--clip-steps", type=cli.positive_int,
                   help="with --make-bases: train the tiny CLIP this many steps (its bases go to checkpoints/base-clipN)")
    g.add_argument("--processes", type=cli.positive_int,
                   help="make the tiny bases and run both stages as this many processes under torchrun (default on a "
                        "CPU with 2 or more cores: 2, which trains faster there than one process with all the threads)")
    args = p.parse_args(argv)
    if args.stage is not None:
        for name in ("data", "image_root", "out"):
            if getattr(args, name) is None:
                p.error(f"--stage {args.stage} needs --{name.replace('_', '-')}")
        if args.init is None and (args.vision is None or args.llm is None):
            p.error("give --init (a LLaVA checkpoint) or both --vision and --llm")
        if len(args.image_root) not in (1, len(args.data)):
            p.error("give one --image-root, or one per --data file")
        lora = recipe(args).lora_r is not None
        if lora and args.stage == 1:
            p.error("--lora-r is for stage 2 (stage 1 trains only the projector)")
        if lora and args.init is None:
            p.error("LoRA needs --init: the adapter is saved against that base checkpoint (the stage-1 result)")
        if lora and args.fsdp:
            p.error("--fsdp with LoRA: LoRA's optimizer state is small; train it with plain data parallelism")
    return args


def recipe(args) -> StageRecipe:
    """The preset's recipe for --stage, with every override that was given (`is not None`: 0 is a value too)."""
    preset = PRESETS[args.preset]
    r = preset.stage1 if args.stage == 1 else preset.stage2
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(StageRecipe)
                 if getattr(args, f.name, None) is not None}
    if "lora_targets" in overrides:
        overrides["lora_targets"] = tuple(overrides["lora_targets"])
    r = dataclasses.replace(r, **overrides)
    if r.lora_r is not None and r.lora_alpha is None:
        r = dataclasses.replace(r, lora_alpha=2.0 * r.lora_r)
    return r
