"""The learning-rate schedule and the optimizer of both stages: AdamW with HF's cosine schedule, as LLaVA trains.

    optimizer = build_optimizer(model, params, recipe, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup_ratio=0.03))
"""
from __future__ import annotations

import math

import torch


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


def build_optimizer(model, params: list, r, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable `params`. With `r.projector_lr` (LLaVA's mm_projector_lr) the projector gets its own
    group and learning rate; the LLM's group comes first, so the lr a run logs is the LLM's."""
    groups = params
    if r.projector_lr is not None:
        projector = {id(p) for p in model.multi_modal_projector.parameters()}
        groups = [g for g in ({"params": [p for p in params if id(p) not in projector]},
                              {"params": [p for p in params if id(p) in projector], "lr": r.projector_lr})
                  if g["params"]]
    return torch.optim.AdamW(groups, lr=r.lr, weight_decay=weight_decay, betas=(0.9, 0.999))
