"""The bookkeeping around train.py's loop: learning-rate schedule, checkpoints, processes (DDP/FSDP), metrics.

Everything here is plain functions over files and tensors, so train.py can stay one readable loop:

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total_steps, warmup_ratio=0.03))
    save_checkpoint(out_dir, step, model_files, trainer_state)       # atomic: a killed save leaves the last one intact
    path = latest_checkpoint(out_dir)                                # newest complete checkpoint-NNNNNN folder
    log = MetricsLog(out_dir); log.write({...}); log.plot()          # metrics.csv and loss.png
"""
from __future__ import annotations

import csv
import math
import os
import random
import re
import shutil

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.pt"     # optimizer, scheduler, RNG states, data position


# ---------------------------------------------------------------------------------------------------------------
# Schedule

def cosine_with_warmup(total_steps: int, warmup_ratio: float = 0.03):
    """LR multiplier per step, as HF's cosine schedule that LLaVA uses: linear warmup over ceil(ratio * total) steps
    from 0, then half a cosine down to 0 at the last step."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return multiplier


# ---------------------------------------------------------------------------------------------------------------
# Data order

def shuffled_turns(entry: dict, seed: int) -> dict:
    """A short-answer sample with its question-answer pairs in random order; `<image>` stays in the first question.

    The teachers ask in a fixed order ("How many objects?" first, "Where is ...?" fifth, ...), and a tiny LLM learns
    that order as a shortcut, taking the answer type from the turn number instead of the question; evaluation then
    asks every question as the first turn. Shuffled, every kind of question appears in every turn."""
    rng = random.Random(f"{seed}:{entry['id']}")
    turns = entry["conversations"]
    pairs = [[dict(turns[i]), dict(turns[i + 1])] for i in range(0, len(turns) - 1, 2)]
    first = pairs[0][0]["value"]
    pairs[0][0]["value"] = first.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "")
    rng.shuffle(pairs)
    pairs[0][0]["value"] = "<image>\n" + pairs[0][0]["value"]
    return {**entry, "conversations": [t for pair in pairs for t in pair]}


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints

def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str, step: int, write_model, trainer_state: dict, keep: int = 2) -> str:
    """Write {out_dir}/checkpoint-{step:06d}/ atomically and return its path.

    `write_model(folder)` writes the model files (model.safetensors, config.json, tokenizer.json, llava_mini.json);
    trainer_state.pt holds what a resume needs. Everything is written into a temporary folder first and renamed
    in one step, so a save killed half-way leaves only a stray temp folder and the previous checkpoint intact.
    Older checkpoints beyond `keep` are deleted after the new one is in place."""
    final = os.path.join(out_dir, f"checkpoint-{step:06d}")
    tmp = os.path.join(out_dir, f".tmp-checkpoint-{step:06d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_model(tmp)
    torch.save(trainer_state, os.path.join(tmp, TRAINER_STATE))
    if os.path.exists(final):           # the same step saved again (e.g. Ctrl-C right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out_dir: str) -> list[str]:
    """Complete checkpoint folders in step order (temp folders of interrupted saves are not listed)."""
    if not os.path.isdir(out_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(out_dir) if (m := CHECKPOINT_RE.match(name))
             and os.path.exists(os.path.join(out_dir, name, TRAINER_STATE))]
    return [os.path.join(out_dir, name) for _, name in sorted(found)]


def latest_checkpoint(out_dir: str) -> str | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def load_trainer_state(checkpoint_dir: str) -> dict:
    path = os.path.join(checkpoint_dir, TRAINER_STATE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{checkpoint_dir}: no {TRAINER_STATE}, not a resumable checkpoint")
    return torch.load(path, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------------------------------------------------------
# Processes: single, DDP or FSDP under torchrun

def setup_distributed(args):
    """Under torchrun (WORLD_SIZE > 1): one process per device; gloo on CPU, nccl on CUDA. Returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    return rank, world, device


def all_reduce_sum(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(world: int) -> None:
    """Wait for every process (under torchrun); nothing to wait for alone."""
    if world > 1:
        dist.barrier()


def sum_gradients(model: torch.nn.Module, world: int) -> None:
    """What DDP does after backward, written out for the stage-0 loops (make_tiny): every process ends with the
    sum over processes of its gradients, in one all-reduce of all of them flattened together. With each process's
    loss its share of the global batch's loss, that sum is the one-process gradient."""
    if world == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]), world)
    for g, new in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(new.view_as(g))


class GatherWithGrad(torch.autograd.Function):
    """all_gather that gradients flow back through: (n, ...) on each process -> (world * n, ...) on every process,
    in rank order. A contrastive loss needs it: each image must meet every process's captions. Backward gives each
    process the sum over processes of the gradient for its own rows (an all-reduce, then its slice: a
    reduce-scatter that gloo can do)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_grad(x: torch.Tensor, world: int) -> torch.Tensor:
    return GatherWithGrad.apply(x) if world > 1 else x


def wrap_for_processes(model, args, world: int, device, find_unused_parameters: bool = True):
    """DDP (every process holds the whole model) or FSDP2 (each holds a shard) under torchrun; as is otherwise."""
    if world == 1:
        return model
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard
        for layer in list(model.language_model.model.layers) + list(model.vision_tower.vision_model.encoder.layers):
            fully_shard(layer)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel
    # find_unused_parameters: a micro-batch of text-only samples sends no gradient to the projector. Finding them costs
    # a walk of the autograd graph every step (and a warning when there are none), so only when the data needs it.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def full_state(model, args, world: int) -> dict:
    """The whole state dict on the CPU (gathered from the shards under FSDP; collective, so every process calls it)."""
    if args.fsdp and world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


class StateView:
    """What weights.save_llava needs from a model (`config`, `state_dict()`), for a state gathered from FSDP shards."""
    def __init__(self, config, state):
        self.config, self._state = config, state

    def state_dict(self):
        return self._state


def optimizer_state(net, optimizer, args, world: int) -> dict:
    if args.fsdp and world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(net, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(net, optimizer, state: dict, args, world: int) -> None:
    if args.fsdp and world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(net, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------
# Metrics

class MetricsLog:
    """metrics.csv (one row per optimizer step) and loss.png. On resume the rows after the resumed step are dropped,
    so the file always describes one consistent run."""
    FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"]

    def __init__(self, out_dir: str, resume_step: int | None = None):
        self.path = os.path.join(out_dir, "metrics.csv")
        self.png = os.path.join(out_dir, "loss.png")
        rows = self.read(self.path) if resume_step is not None and os.path.exists(self.path) else []
        self.rows = [r for r in rows if int(r["step"]) <= resume_step] if resume_step is not None else []
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    @staticmethod
    def read(path: str) -> list[dict]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def write(self, row: dict) -> None:
        row = {k: row.get(k, "") for k in self.FIELDS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)

    def plot(self, title: str = "") -> None:
        """Loss per step (and a smoothed line) to loss.png; matplotlib with the Agg backend, so no display is needed."""
        if not self.rows:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        steps = [int(r["step"]) for r in self.rows]
        losses = [float(r["loss"]) for r in self.rows]
        k = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, losses, alpha=0.35, label="loss")
        ax.plot(steps, smooth, label=f"mean of {k}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.png + ".tmp.png", dpi=100)
        plt.close(fig)
        os.replace(self.png + ".tmp.png", self.png)
