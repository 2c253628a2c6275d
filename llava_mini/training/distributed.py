"""Processes: one, or several under torchrun (DDP, or FSDP2 when the model does not fit one device).

On a CPU the processes talk over gloo, on GPUs over nccl; the same code runs the classroom model as two CPU
processes and the 7B recipe on eight GPUs. The stage-0 loops (weights/make_tiny.py) use the collectives directly:
`sum_gradients` is what DDP does after backward, written out, and `gather_with_grad` lets a contrastive loss see
every process's half of the batch.

    rank, world, device = setup_distributed(args)
    net = wrap_for_processes(model, args, world, device)
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def shutdown_distributed() -> None:
    """Close the process group a torchrun process opened, before it exits. A gloo group left for the interpreter's
    exit to tear down can abort the process after its work is done ("terminate called without an active
    exception", exit code -6), and torchrun then reports the whole run failed."""
    if dist.is_initialized():
        dist.destroy_process_group()


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
