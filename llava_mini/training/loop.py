"""One training loop for both of LLaVA's stages, in named steps: set up, restore, one optimizer step, save.

    from llava_mini.training.args import parse_args
    from llava_mini.training.loop import train
    final = train(parse_args(["--stage", "1", "--data", ..., "--vision", ..., "--llm", ..., "--out", ...]))

What one optimizer step does: take the next global batch (a pure function of seed and epoch, so a resumed run sees
the same batches), give each process its share, run it in micro-batches (gradient accumulation), weight each
micro-batch's mean loss by its number of trained tokens so the gradient is the mean over all trained tokens of the
global batch (the same for any number of processes and micro-batches), clip, step AdamW and the cosine schedule.
What trains is model_setup.py's freeze policy (the tower never does); with --lora-r the checkpoints are PEFT adapters
(loading/adapters.py) instead of whole models.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from llava_mini.data.dataset import LengthGroupedBatchSampler, LlavaDataset, collate, micro_batches
from llava_mini.data.tokenizer import Tokenizer
from llava_mini.jsonio import read_json
from llava_mini.loading import weights
from llava_mini.loading.adapters import ADAPTER_CONFIG, is_adapter, lora_settings, save_adapter
from llava_mini.model.attention import set_attention_backend
from llava_mini.model.config import LlavaConfig
from llava_mini.model.lm_loss import loss_weight
from llava_mini.model.llava import LlavaForConditionalGeneration
from llava_mini.model.lora import lora_layers
from llava_mini.training.args import recipe
from llava_mini.training.checkpoints import (
    check_resume,
    clear_debris,
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from llava_mini.training.distributed import (
    StateView,
    all_reduce_sum,
    barrier,
    full_state,
    load_optimizer_state,
    optimizer_state,
    setup_distributed,
    wrap_for_processes,
)
from llava_mini.training.metrics import MetricsLog
from llava_mini.training.model_setup import build_model, set_train_mode, set_trainable
from llava_mini.training.optim import build_optimizer, lr_multiplier
from llava_mini.training.recipes import PRESETS, StageRecipe

# ---------------------------------------------------------------------------------------------------------------
# The data

def build_dataset(args, r: StageRecipe, tokenizer: Tokenizer, config: LlavaConfig):
    """One dataset over all --data files (each with its image root), and every sample's length for batching."""
    roots = args.image_root * len(args.data) if len(args.image_root) == 1 else args.image_root
    parts = [LlavaDataset(path, root, tokenizer, r.template, config, max_length=r.max_length,
                          skip_bad=args.skip_bad) for path, root in zip(args.data, roots)]
    return torch.utils.data.ConcatDataset(parts), [n for d in parts for n in d.lengths]


def model_inputs(batch: dict, device) -> dict:
    """A batch's tensors as the model's keyword arguments, on `device` (pixel_values is None without images)."""
    pixels = batch["pixel_values"]
    return {"input_ids": batch["input_ids"].to(device), "labels": batch["labels"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
            "pixel_values": None if pixels is None else pixels.to(device)}


def batch_weight(batch: dict, answer_weighting: float = 0.0) -> float:
    """The weight of a batch's share of the loss: its trained tokens (lm_loss.count_trained_tokens: the one rule),
    each weighted as lm_loss.answer_weights says."""
    return loss_weight(batch["labels"], batch["attention_mask"], answer_weighting)


@torch.no_grad()
def mean_loss(model, dataset, pad_id: int, batch_size: int = 32) -> float:
    """Mean per-token loss of `model` over `dataset` (a held-out set), in eval mode; the mode is restored. Every
    token weighs the same, whatever the recipe's answer_weighting, so held-out losses compare across recipes."""
    was_training = model.training
    model.eval()
    total = count = 0.0
    device = next(model.parameters()).device
    for s in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(s, min(len(dataset), s + batch_size))], pad_id)
        n = batch_weight(batch)
        out = model(**model_inputs(batch, device))
        total += out.loss.item() * n
        count += n
    model.train(was_training)
    return total / count


# ---------------------------------------------------------------------------------------------------------------
# Setting up, restoring and saving a run

@dataclasses.dataclass
class Run:
    """Everything one stage's loop works with."""
    args: object
    recipe: StageRecipe
    rank: int
    world: int
    device: torch.device
    model: LlavaForConditionalGeneration     # the model itself (its state dict has the HF key names)
    net: torch.nn.Module                     # what the loop calls: the model, or its DDP/FSDP wrapper
    params: list
    tokenizer: Tokenizer
    tokenizer_json: str
    dataset: torch.utils.data.ConcatDataset
    sampler: LengthGroupedBatchSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    heldout: LlavaDataset | None             # --eval-data, read on the first process only
    lora: dict | None = None                 # with LoRA: the adapters' settings (adapters.lora_settings) ...
    lora_base: str | None = None             # ... and the checkpoint the adapter is saved against

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def meta(self, step: int, **extra) -> dict:
        """What llava_mini.json records beside the weights."""
        a = self.args
        recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.recipe).items()}
        return {"template": self.recipe.template, "stage": a.stage, "preset": a.preset,
                "recipe": recipe, "data": a.data, "seed": a.seed,
                "total_steps": self.total_steps,
                "step": step, **extra}


def setup(args) -> Run:
    """Processes, model (from --init, a LLaVA checkpoint, or from --vision + --llm), freeze policy, data, optimizer."""
    rank, world, device = setup_distributed(args)
    r = recipe(args)
    torch.manual_seed(args.seed)
    model, tokenizer_json = build_model(args, r)
    tokenizer = Tokenizer.from_file(tokenizer_json)
    tokenizer.check_image_token(model.config.image_token_index, tokenizer_json)
    if rank == 0 and os.path.abspath(os.path.dirname(tokenizer_json)) != os.path.abspath(args.out):
        # Every checkpoint copies the tokenizer from here: not from --init, which may be a checkpoint of this run
        # that the rotation (keep=2) deletes.
        shutil.copyfile(tokenizer_json, os.path.join(args.out, "tokenizer.json"))
        tokenizer_json = os.path.join(args.out, "tokenizer.json")
    params = set_trainable(model, args.stage)
    model.to(device)
    set_attention_backend(model, args.attention)
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

    if r.batch_size % world:
        raise ValueError(f"global batch {r.batch_size} is not divisible by {world} processes")
    sampler = LengthGroupedBatchSampler(lengths, r.batch_size, shuffle=True, seed=args.seed, drop_last=True,
                                        group=50 if args.group_by_length else 1)   # group=1: a plain shuffle
    if len(sampler) == 0:
        raise ValueError(f"{len(dataset)} samples are fewer than one global batch of {r.batch_size}")
    total_steps = math.ceil(r.epochs * len(sampler))
    if r.max_steps:
        total_steps = min(total_steps, r.max_steps)
    optimizer = build_optimizer(model, params, r, args.weight_decay)
    multiplier = lr_multiplier(r.lr_schedule, total_steps, args.warmup_ratio, r.lr_decay_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    heldout = None
    if args.eval_data and rank == 0:
        heldout = LlavaDataset(args.eval_data, args.eval_image_root or args.image_root[0], tokenizer, r.template,
                               model.config, max_length=r.max_length)
    lora = lora_base = None
    if lora_layers(model):         # a LoRA run that starts from an adapter (a resumed one) keeps the adapter's base
        lora = lora_settings(model)
        lora_base = read_json(os.path.join(args.init, ADAPTER_CONFIG))["base_model_name_or_path"] \
            if is_adapter(args.init) else os.path.abspath(args.init)
    return Run(args, r, rank, world, device, model, net, params, tokenizer, tokenizer_json, dataset, sampler,
               optimizer, scheduler, total_steps, heldout, lora, lora_base)


def restore(run: Run, checkpoint_dir: str) -> int:
    """Optimizer, schedule and RNG states from a checkpoint (the weights came with setup). Returns its step."""
    check_resume(checkpoint_dir, run.meta(0))
    state = load_trainer_state(checkpoint_dir)
    load_optimizer_state(run.net, run.optimizer, state["optimizer"], run.args, run.world)
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"][run.rank] if isinstance(state["rng"], list) else state["rng"])
    if run.rank == 0:
        print(f"resumed from {checkpoint_dir} at step {state['step']}")
    return state["step"]


def save(run: Run, step: int, log: MetricsLog | None) -> str | None:
    """A resumable checkpoint-NNNNNN/ (model files + trainer state). Every process joins (FSDP gathers, the RNG
    states are collected); the first one writes. Returns its path on the first process."""
    model_state = full_state(run.net if run.args.fsdp else run.model, run.args, run.world)
    opt_state = optimizer_state(run.net, run.optimizer, run.args, run.world)
    rngs = [None] * run.world
    if run.world > 1:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if run.rank != 0:
        return None
    view = StateView(run.model.config, model_state)
    path = save_checkpoint(run.args.out, step, lambda d: save_model(run, view, d, run.meta(step)),
                           {"step": step, "optimizer": opt_state, "scheduler": run.scheduler.state_dict(), "rng": rngs})
    log.plot(f"stage {run.args.stage}")
    return path


def save_final(run: Run, step: int, log: MetricsLog | None, extra: dict) -> str:
    """{out}/final: the weights in the HF llava layout, the tokenizer and llava_mini.json (no trainer state)."""
    final = os.path.join(run.args.out, "final")
    state = full_state(run.net if run.args.fsdp else run.model, run.args, run.world)
    if run.rank == 0:
        save_model(run, StateView(run.model.config, state), final, run.meta(step, **extra))
        log.plot(f"stage {run.args.stage}")
    return final


def save_model(run: Run, view: StateView, folder: str, meta: dict) -> str:
    """The model files of a checkpoint: the HF llava layout, or with LoRA the adapter in PEFT's format."""
    if run.lora is not None:
        return save_adapter(view, folder, run.lora_base, run.lora, run.tokenizer_json, {"llava_mini.json": meta})
    return weights.save_llava(view, folder, run.tokenizer_json, {"llava_mini.json": meta})


# ---------------------------------------------------------------------------------------------------------------
# One optimizer step

def train_step(run: Run, step: int, autocast) -> tuple[torch.Tensor, torch.Tensor, float, list]:
    """Step `step` (counted from 0) of the run: its global batch, forward and backward in micro-batches, clip, AdamW,
    schedule. Returns (loss over the global batch, gradient norm, tokens in the batch, the micro-batches)."""
    epoch, pos = divmod(step, run.steps_per_epoch)
    run.sampler.set_epoch(epoch)
    global_batch = run.sampler.batches()[pos]
    mine = [run.dataset[i] for i in global_batch[run.rank::run.world]]            # this process's share
    mine = [s for s in mine if s is not None]                     # samples whose image --skip-bad skipped
    if not mine:
        raise ValueError(f"step {step + 1}: every sample of this process's share of the batch was skipped (bad images)")
    batches = micro_batches(mine, run.recipe.micro_batch_size, run.tokenizer.pad_id,
                            run.model.config.image_token_index, run.recipe.max_length if run.args.pack else None)
    answer_weighting = run.recipe.answer_weighting
    total = all_reduce_sum(torch.tensor(sum(batch_weight(b, answer_weighting) for b in batches)), run.world)
    step_loss = torch.zeros((), dtype=torch.float64)
    for k, batch in enumerate(batches):
        sync = k == len(batches) - 1 or run.world == 1
        with (contextlib.nullcontext() if sync or run.args.fsdp else run.net.no_sync()), autocast:
            out = run.net(**model_inputs(batch, run.device), return_logits=False, answer_weighting=answer_weighting)
            # (weighted) mean over this micro-batch's tokens -> its share of the mean over the global batch's;
            # x world because DDP/FSDP average the gradients over processes.
            weight = batch_weight(batch, answer_weighting) / total.item()
            (out.loss * weight * run.world).backward()
        step_loss += out.loss.detach().double().cpu() * weight
    step_loss = all_reduce_sum(step_loss, run.world)
    if not torch.isfinite(step_loss):
        return step_loss, torch.tensor(float("nan")), 0.0, batches       # the caller stops; nothing is stepped
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, run.args.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    tokens = all_reduce_sum(torch.tensor(float(sum(s["length"] for s in mine))), run.world).item()
    return step_loss, grad_norm, tokens, batches


# ---------------------------------------------------------------------------------------------------------------
# The loop

def train(args) -> str:
    """Run one stage. Returns the final checkpoint folder ({out}/final)."""
    os.makedirs(args.out, exist_ok=True)
    resume_from = latest_checkpoint(args.out) if args.resume else None
    if args.resume and resume_from is None and int(os.environ.get("RANK", "0")) == 0:
        print(f"--resume: no checkpoint in {args.out}, starting from the beginning")
    if resume_from:
        args.init = resume_from                       # a resumed run's weights come from its checkpoint
    run = setup(args)
    first_step = step = restore(run, resume_from) if resume_from else 0
    heldout = {}
    if run.heldout is not None:
        heldout["heldout_loss_start"] = mean_loss(run.model, run.heldout, run.tokenizer.pad_id)
        print(f"stage {args.stage}: held-out loss {heldout['heldout_loss_start']:.3f} at step {step} "
              f"({len(run.heldout)} samples of {args.eval_data})")
    log = MetricsLog(args.out, resume_step=step) if run.rank == 0 else None
    if run.rank == 0:
        clear_debris(args.out)                        # what an earlier run, killed while saving, left behind
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.device.type == "cuda" else contextlib.nullcontext())

    # Ctrl-C (SIGINT) and a scheduler's SIGTERM both end in a resumable checkpoint. Set the handlers explicitly: a
    # process started in the background by a shell inherits SIGINT as *ignored*.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    bar = tqdm(total=run.total_steps, initial=step, desc=f"stage {args.stage}", disable=run.rank != 0 or args.quiet,
               dynamic_ncols=True)
    t_start, tokens_done, last_good = time.time(), 0, resume_from
    try:
        while step < run.total_steps:
            loss, grad_norm, tokens, batches = train_step(run, step, autocast)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"stage {args.stage}: the loss is {loss.item()} at step {step + 1} (samples "
                    f"{[b for m in batches for b in m.get('ids', [])][:8]}...). Stopped without saving; the last good "
                    f"checkpoint is {last_good or 'none (no checkpoint was written yet)'}. Try a lower --lr.")
            step += 1
            tokens_done += tokens
            elapsed = time.time() - t_start
            if run.rank == 0:
                lr = run.scheduler.get_last_lr()[0]
                log.write({"step": step, "epoch": f"{step / run.steps_per_epoch:.4f}", "loss": f"{loss.item():.6f}",
                           "lr": f"{lr:.6g}", "grad_norm": f"{float(grad_norm):.4f}", "tokens": int(tokens),
                           "tokens_per_s": f"{tokens_done / elapsed:.0f}", "elapsed_s": f"{elapsed:.1f}"})
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_done / elapsed:.0f}")
                bar.update(1)
            if args.save_every and step % args.save_every == 0 and step < run.total_steps:
                last_good = save(run, step, log)
    except KeyboardInterrupt:
        # A partial step's gradients are dropped; the checkpoint is at the last completed step.
        bar.close()
        path = save(run, step, log)
        if run.rank == 0:
            print(f"\ninterrupted: saved {path}; continue with the same command and --resume", file=sys.stderr)
        raise SystemExit(130)
    except (FloatingPointError, SystemExit):
        raise
    except Exception as e:
        # Anything else (a bad image without --skip-bad, a full disk, ...): keep the steps done so far. Under
        # several processes the others may be gone, so only a single process can still save.
        bar.close()
        if run.world == 1 and step > first_step:
            path = save(run, step, log)
            print(f"\nstage {args.stage} failed in step {step + 1}: {e}\nsaved {path} (step {step}); fix the cause "
                  f"and continue with the same command and --resume", file=sys.stderr)
        raise
    bar.close()

    if run.heldout is not None:
        heldout["heldout_loss_end"] = mean_loss(run.model, run.heldout, run.tokenizer.pad_id)
        print(f"stage {args.stage}: held-out loss {heldout['heldout_loss_start']:.3f} -> "
              f"{heldout['heldout_loss_end']:.3f}")
    seconds = time.time() - t_start
    timing = {"train_seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(1, step - first_step), 4),
              "tokens_per_s": round(tokens_done / max(seconds, 1e-9))}     # this process's tokens
    final = save_final(run, step, log, {**heldout, **timing})
    if run.rank == 0:
        print(f"stage {args.stage}: {step} steps in {time.time() - t_start:.0f} s; saved {final}")
        for part in run.dataset.datasets:      # what --skip-bad left out, said again at the end where it is seen
            part.print_summary()
    barrier(run.world)
    return final
