"""Train LLaVA: stage 1 (feature alignment) and stage 2 (instruction tuning) in one readable loop.

    python train.py                 # the whole classroom pipeline on a CPU: world data, tiny bases, stage 1, stage 2,
                                    # evaluation and a report (pipeline.py); then chat with the result:
                                    #   python chat.py --model checkpoints/tiny/final
    python train.py --quick         # the same at toy size (a smoke test, seconds)

One stage at a time (the pipeline prints the exact commands it runs):
    python train.py --stage 1 --data data/shapes/stage1.json --image-root data/shapes \\
        --vision checkpoints/base/tiny-clip --llm checkpoints/base/tiny-llama --out checkpoints/tiny/stage1
    python train.py --stage 2 --data data/shapes/stage2.json data/easyvqa/easyvqa_train.json \\
        --image-root data/shapes data/easyvqa --init checkpoints/tiny/stage1/final --out checkpoints/tiny
    python train.py --stage 2 ... --resume          # continue exactly from the newest checkpoint in --out

The paper's configuration on GPUs (DDP; add --fsdp when the model does not fit on one GPU):
    torchrun --nproc_per_node 8 train.py --preset llava-1.5-7b --stage 1 --data blip_laion_cc_sbu_558k.json \\
        --image-root images --vision clip-vit-large-patch14-336 --llm vicuna-7b-v1.5 --out checkpoints/llava-1.5-7b/stage1

What the loop does per optimizer step: take the next global batch (a pure function of seed and epoch, so a resumed
run sees the same batches), give each process its share, run it in micro-batches (gradient accumulation), weight
each micro-batch's mean loss by its number of trained tokens so the gradient is the mean over all trained tokens of
the global batch (the same for any number of processes and micro-batches), clip, step AdamW and the cosine schedule.
The vision tower is always frozen (and in eval mode); stage 1 trains the projector only, stage 2 the projector and LLM.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time

# OpenMP threads that busy-wait for work turn a shared CPU into a crawl (measured here: 2 threads on 2 cores next to one
# other busy process ran 15x slower than with passive waiting). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tqdm import tqdm  # noqa: E402

from llava_mini import weights  # noqa: E402
from llava_mini.config import LlavaConfig  # noqa: E402
from llava_mini.data import LengthGroupedBatchSampler, LlavaDataset, collate, pack  # noqa: E402
from llava_mini.llava import LlavaForConditionalGeneration  # noqa: E402
from llava_mini.projector import LlavaMultiModalProjector  # noqa: E402
from llava_mini.recipes import PRESETS, StageRecipe  # noqa: E402
from llava_mini.tokenizer import Tokenizer  # noqa: E402
from llava_mini.train_utils import (  # noqa: E402
    MetricsLog, StateView, all_reduce_sum, barrier, cosine_with_warmup, full_state, latest_checkpoint,
    load_optimizer_state, load_trainer_state, optimizer_state, rng_state, save_checkpoint, set_rng_state,
    setup_distributed, wrap_for_processes)


# ---------------------------------------------------------------------------------------------------------------
# Arguments

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train LLaVA (stage 1 or 2); no --stage runs the whole tiny pipeline.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), help="omit to run the whole pipeline")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--data", nargs="+", help="LLaVA JSON/JSONL file(s); several are mixed")
    p.add_argument("--image-root", nargs="+", help="image folder per data file (one for all is fine)")
    p.add_argument("--vision", help="stage 1: CLIP checkpoint folder (the frozen vision tower)")
    p.add_argument("--llm", help="stage 1: LLaMA checkpoint folder with tokenizer.json (or 'smollm2')")
    p.add_argument("--init", help="a LLaVA checkpoint folder to start from (stage 2: the stage-1 result)")
    p.add_argument("--out", help="output folder: checkpoint-NNNNNN/, final/, metrics.csv, loss.png")
    g = p.add_argument_group("overrides of the preset")
    g.add_argument("--lr", type=float)
    g.add_argument("--projector-lr", type=float, help="the projector's own learning rate (LLaVA's mm_projector_lr)")
    g.add_argument("--batch-size", type=int, help="global batch size")
    g.add_argument("--micro-batch-size", type=int, help="per process")
    g.add_argument("--epochs", type=float)
    g.add_argument("--max-length", type=int)
    g.add_argument("--template")
    g.add_argument("--projector-type")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (the schedule fits them)")
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--group-by-length", action="store_true", help="batches of similar lengths (less padding)")
    p.add_argument("--pack", action="store_true", help="several samples per row (no padding), segment-id masks")
    p.add_argument("--compile", action="store_true", help="torch.compile the language model")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard parameters/grads/optimizer (FSDP2)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) broken samples and images instead of stopping at the first one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads per process (default: cores / processes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # the default pipeline
    p.add_argument("--quick", action="store_true", help="pipeline at toy size (smoke test)")
    p.add_argument("--workdir", default=".", help="pipeline: where data/ and checkpoints/ go")
    p.add_argument("--no-easyvqa", action="store_true", help="pipeline: leave easy-VQA out of stage 2 and evaluation")
    p.add_argument("--clip-steps", type=int,
                   help="pipeline: train the tiny CLIP this many steps (default 2000; 4000 reads shape better and "
                        "takes 5 to 7 minutes more; its bases go to checkpoints/base-clipN)")
    p.add_argument("--processes", type=int,
                   help="pipeline: make the tiny bases and run stage 2 as this many processes under torchrun (default "
                        "on a CPU with 2 or more cores: 2, which trains faster there than one process with all the threads)")
    args = p.parse_args(argv)
    if args.clip_steps is not None and args.clip_steps < 1:
        p.error(f"--clip-steps must be >= 1, got {args.clip_steps}")
    if args.stage is not None:
        for name in ("data", "image_root", "out"):
            if getattr(args, name) is None:
                p.error(f"--stage {args.stage} needs --{name.replace('_', '-')}")
        if args.init is None and (args.vision is None or args.llm is None):
            p.error("give --init (a LLaVA checkpoint) or both --vision and --llm")
        if len(args.image_root) not in (1, len(args.data)):
            p.error("give one --image-root, or one per --data file")
    return args


def recipe(args) -> StageRecipe:
    preset = PRESETS[args.preset]
    r = preset.stage1 if args.stage == 1 else preset.stage2
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(StageRecipe)
                 if getattr(args, f.name, None) is not None}
    return dataclasses.replace(r, **overrides)


# ---------------------------------------------------------------------------------------------------------------
# Model

def build_model(args, r: StageRecipe) -> tuple[LlavaForConditionalGeneration, str]:
    """The model and the path of its tokenizer.json. Stage 1 from a CLIP + an LLM (+ a new projector), or from a LLaVA
    checkpoint (--init; also how stage 2 starts, and how --resume reloads)."""
    if args.init:
        model = weights.load_llava(args.init)
        return model, os.path.join(args.init, "tokenizer.json")
    llm_dir = args.llm
    if llm_dir == "smollm2":
        from llava_mini.hub import get_smollm2
        llm_dir = get_smollm2()
    tokenizer_json = os.path.join(llm_dir, "tokenizer.json")
    tokenizer = Tokenizer.from_file(tokenizer_json)
    vision = weights.load_clip(args.vision, vision_only=True)
    llm = weights.load_llama(llm_dir)
    config = LlavaConfig(vision_config=vision.config, text_config=llm.config,
                         projector_type=args.projector_type or PRESETS[args.preset].projector_type,
                         image_aspect_ratio=PRESETS[args.preset].image_aspect_ratio,
                         image_token_index=tokenizer.image_token_id)
    with weights.parameters_on_meta():
        model = LlavaForConditionalGeneration(config)
    # The towers come in as loaded; only the projector is new (PyTorch's default init, as in LLaVA).
    model.vision_tower, model.language_model = vision, llm
    model.multi_modal_projector = LlavaMultiModalProjector(config)
    return model, tokenizer_json


def set_trainable(model: LlavaForConditionalGeneration, stage: int) -> list[torch.nn.Parameter]:
    """The freeze policy: the vision tower never trains; stage 1 trains the projector, stage 2 projector + LLM."""
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(True)
    if stage == 2:
        model.language_model.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: LlavaForConditionalGeneration) -> None:
    model.train()
    model.vision_tower.eval()      # frozen: no dropout or other train-time behaviour, ever


# ---------------------------------------------------------------------------------------------------------------
# Data

def build_dataset(args, r: StageRecipe, tokenizer: Tokenizer, config: LlavaConfig):
    """One dataset over all --data files (each with its image root), and every sample's length for batching."""
    roots = args.image_root * len(args.data) if len(args.image_root) == 1 else args.image_root
    parts = [LlavaDataset(path, root, tokenizer, r.template, config, max_length=r.max_length,
                          skip_bad=args.skip_bad) for path, root in zip(args.data, roots)]
    return torch.utils.data.ConcatDataset(parts), [n for d in parts for n in d.lengths]


def micro_batches(samples: list, r: StageRecipe, args, pad_id: int, image_token_id: int) -> list[dict]:
    """This process's share of a global batch, as model inputs: padded micro-batches, or packed rows."""
    if args.pack:
        # Pack into rows of max_length, then feed micro_batch_size rows at a time.
        rows = pack(samples, r.max_length, pad_id)
        n = rows["input_ids"].shape[0]
        return [slice_rows(rows, s, s + r.micro_batch_size, image_token_id) for s in range(0, n, r.micro_batch_size)]
    return [collate(samples[s:s + r.micro_batch_size], pad_id) for s in range(0, len(samples), r.micro_batch_size)]


def slice_rows(rows: dict, start: int, stop: int, image_token_id: int) -> dict:
    """Rows start:stop of a batch, with their images (pixel_values are in placeholder order, row by row)."""
    ids = rows["input_ids"]
    images_before = int((ids[:start] == image_token_id).sum())
    images_in = int((ids[start:stop] == image_token_id).sum())
    pixels = rows["pixel_values"]
    return {"input_ids": ids[start:stop], "labels": rows["labels"][start:stop],
            "attention_mask": rows["attention_mask"][start:stop],
            "pixel_values": None if pixels is None or images_in == 0 else pixels[images_before:images_before + images_in]}


def trained_tokens(batch: dict) -> int:
    """How many positions carry a loss (the causal shift: position t predicts label t + 1; packed rows do not
    predict across a sample boundary because every sample's first label is -100)."""
    return int((batch["labels"][:, 1:] != -100).sum())


# ---------------------------------------------------------------------------------------------------------------
# The loop

def train(args) -> str:
    """Run one stage. Returns the final checkpoint folder ({out}/final)."""
    rank, world, device = setup_distributed(args)
    r = recipe(args)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    resume_from = latest_checkpoint(args.out) if args.resume else None
    if args.resume and resume_from is None and rank == 0:
        print(f"--resume: no checkpoint in {args.out}, starting from the beginning")
    if resume_from:
        args.init = resume_from                       # the model weights come from the checkpoint
    model, tokenizer_json = build_model(args, r)
    tokenizer = Tokenizer.from_file(tokenizer_json)
    tokenizer.check_image_token(model.config.image_token_index, tokenizer_json)
    params = set_trainable(model, args.stage)
    model.to(device)
    if args.gradient_checkpointing or (args.gradient_checkpointing is None and PRESETS[args.preset].gradient_checkpointing):
        model.language_model.model.gradient_checkpointing = True
    if args.compile:
        model.language_model.compile(dynamic=True)        # in place: the state dict keeps its key names
    set_train_mode(model)
    dataset, lengths = build_dataset(args, r, tokenizer, model.config)
    # DDP must look for parameters without a gradient only when a micro-batch can hold no image (the projector idle)
    text_only = any(not s["images"] for part in dataset.datasets for s in part.samples)
    net = wrap_for_processes(model, args, world, device, find_unused_parameters=text_only)
    if args.fsdp and world > 1:
        params = [p for p in net.parameters() if p.requires_grad]     # FSDP replaced them by sharded ones

    sampler = LengthGroupedBatchSampler(lengths, r.batch_size, shuffle=True, seed=args.seed, drop_last=True,
                                        group=50 if args.group_by_length else 1)   # group=1: a plain shuffle
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} samples are fewer than one global batch of {r.batch_size}")
    total_steps = math.ceil(r.epochs * steps_per_epoch)
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    if r.batch_size % world:
        raise ValueError(f"global batch {r.batch_size} is not divisible by {world} processes")

    groups = params
    if r.projector_lr is not None:        # the projector's own learning rate (LLaVA's mm_projector_lr)
        projector = {id(p) for p in model.multi_modal_projector.parameters()}
        groups = [g for g in ({"params": [p for p in params if id(p) not in projector]},   # first: the lr logged
                              {"params": [p for p in params if id(p) in projector], "lr": r.projector_lr})
                  if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=r.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, args.warmup_ratio))
    step = 0
    if resume_from:
        state = load_trainer_state(resume_from)
        load_optimizer_state(net, optimizer, state["optimizer"], args, world)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
        step = state["step"]
        if rank == 0:
            print(f"resumed from {resume_from} at step {step}")
    log = MetricsLog(args.out, resume_step=step) if rank == 0 else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    meta = {"template": r.template, "stage": args.stage, "preset": args.preset, "recipe": dataclasses.asdict(r),
            "data": args.data, "total_steps": total_steps}

    def checkpoint(at_step: int) -> str | None:
        """Every process joins (FSDP gathers); rank 0 writes."""
        model_state = full_state(net if args.fsdp else model, args, world)
        opt_state = optimizer_state(net, optimizer, args, world)
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        path = None
        if rank == 0:
            view = StateView(model.config, model_state)
            path = save_checkpoint(args.out, at_step, lambda d: weights.save_llava(
                view, d, tokenizer_json, {"llava_mini.json": {**meta, "step": at_step}}),
                {"step": at_step, "optimizer": opt_state, "scheduler": scheduler.state_dict(), "rng": rngs})
            log.plot(f"stage {args.stage}")
        return path

    # Ctrl-C (SIGINT) and a scheduler's SIGTERM both end in a resumable checkpoint. Set the handlers explicitly: a
    # process started in the background by a shell inherits SIGINT as *ignored*.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    bar = tqdm(total=total_steps, initial=step, desc=f"stage {args.stage}", disable=rank != 0 or args.quiet,
               dynamic_ncols=True)
    t_start, tokens_done, last_good = time.time(), 0, resume_from
    try:
        while step < total_steps:
            epoch, pos = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            global_batch = sampler.batches()[pos]
            mine = [dataset[i] for i in global_batch[rank::world]]            # this process's share
            batches = micro_batches(mine, r, args, tokenizer.pad_id, model.config.image_token_index)
            n_tokens = all_reduce_sum(torch.tensor(float(sum(trained_tokens(b) for b in batches))), world)
            step_loss = torch.zeros((), dtype=torch.float64)
            for k, batch in enumerate(batches):
                sync = k == len(batches) - 1 or world == 1
                with (contextlib.nullcontext() if sync or args.fsdp else net.no_sync()), autocast:
                    out = net(input_ids=batch["input_ids"].to(device), labels=batch["labels"].to(device),
                              attention_mask=batch["attention_mask"].to(device),
                              pixel_values=None if batch["pixel_values"] is None else batch["pixel_values"].to(device),
                              return_logits=False)
                    # mean over this micro-batch's tokens -> its share of the mean over the global batch's tokens;
                    # x world because DDP/FSDP average the gradients over processes.
                    weight = trained_tokens(batch) / n_tokens.item()
                    (out.loss * weight * world).backward()
                step_loss += out.loss.detach().double().cpu() * weight
            step_loss = all_reduce_sum(step_loss, world)
            if not torch.isfinite(step_loss):
                raise FloatingPointError(
                    f"stage {args.stage}: the loss is {step_loss.item()} at step {step + 1} (samples "
                    f"{[b for m in batches for b in m.get('ids', [])][:8]}...). Stopped without saving; the last good "
                    f"checkpoint is {last_good or 'none (no checkpoint was written yet)'}. Try a lower --lr.")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            tokens = all_reduce_sum(torch.tensor(float(sum(s["length"] for s in mine))), world).item()
            tokens_done += tokens
            elapsed = time.time() - t_start
            if rank == 0:
                lr = scheduler.get_last_lr()[0]
                log.write({"step": step, "epoch": f"{step / steps_per_epoch:.4f}", "loss": f"{step_loss.item():.6f}",
                           "lr": f"{lr:.6g}", "grad_norm": f"{float(grad_norm):.4f}", "tokens": int(tokens),
                           "tokens_per_s": f"{tokens_done / elapsed:.0f}", "elapsed_s": f"{elapsed:.1f}"})
                bar.set_postfix(loss=f"{step_loss.item():.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_done / elapsed:.0f}")
                bar.update(1)
            if args.save_every and step % args.save_every == 0 and step < total_steps:
                last_good = checkpoint(step)
    except KeyboardInterrupt:
        # A partial step's gradients are dropped; the checkpoint is at the last completed step.
        bar.close()
        path = checkpoint(step)
        if rank == 0:
            print(f"\ninterrupted: saved {path}; continue with the same command and --resume", file=sys.stderr)
        raise SystemExit(130)
    bar.close()

    final = os.path.join(args.out, "final")
    state = full_state(net if args.fsdp else model, args, world)
    if rank == 0:
        weights.save_llava(StateView(model.config, state), final, tokenizer_json,
                           {"llava_mini.json": {**meta, "step": step}})
        log.plot(f"stage {args.stage}")
        print(f"stage {args.stage}: {step} steps in {time.time() - t_start:.0f} s; saved {final}")
        for part in dataset.datasets:      # what --skip-bad left out, said again at the end where it is seen
            part.print_summary()
    barrier(world)
    return final


def main(argv=None):
    args = parse_args(argv)
    if args.stage is None:
        from pipeline import run_pipeline     # the default job (pipeline.py, next to this file)
        return run_pipeline(args)
    return train(args)


if __name__ == "__main__":
    main()
