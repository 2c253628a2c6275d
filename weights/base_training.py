"""What the two stage-0 training loops share (weights/make_tiny.py's train_clip, weights/tiny_llama.py's
train_llama): the initialisation, the warmup + cosine schedule, and one optimizer step over several processes.

    model = init_weights(LlamaForCausalLM(config))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, steps // 20))
    optimizer_step(model, opt, sched, loss, world)
"""
from __future__ import annotations

import math

import torch

from llava_mini.training.distributed import sum_gradients


def init_weights(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """GPT-2 / HF-style initialisation: weights N(0, 0.02), biases 0, norms 1. PyTorch's defaults (N(0, 1) for
    embeddings) would start a tied LM with huge logits and a loss far above log(vocab)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv2d)):
            torch.nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith("class_embedding"):
            torch.nn.init.normal_(p, std=std)
    return model


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def optimizer_step(model, opt, sched, loss, world: int = 1) -> None:
    """Backward, sum the gradients over processes (each loss is its process's share), clip the gradient norm to 1,
    step the optimizer and the schedule (both stage-0 loops)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sum_gradients(model, world)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
