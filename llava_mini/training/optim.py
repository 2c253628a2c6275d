"""The learning-rate schedule and the optimizer of both stages: AdamW with HF's cosine schedule, as LLaVA trains,
or (`--lr-schedule wsd`) warmup-stable-decay, which holds the peak rate until the last fifth of the steps.

    optimizer = build_optimizer(model, params, recipe, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier("cosine", total_steps, warmup_ratio=0.03))
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


def warmup_stable_decay(total_steps: int, warmup_ratio: float = 0.03, decay_ratio: float = 0.2):
    """LR multiplier per step: the same linear warmup, then the peak rate held, then a straight line down to 0 over
    the last `decay_ratio` of the steps (WSD, as MiniCPM and other small-model runs train).

    Why it is here: a skill that a transformer learns abruptly, after a plateau (binding an attribute to the object
    a question names is one, lesson 10), needs a high rate for long enough to leave the plateau; by the middle of a
    cosine the rate has halved. docs/EXPERIMENTS.md (2026-12-06 (evening)) has what it changes in stage 2."""
    warmup, decay = math.ceil(warmup_ratio * total_steps), max(1, round(decay_ratio * total_steps))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, min(1.0, (total_steps - step) / decay))
    return multiplier


SCHEDULES = {"cosine": cosine_with_warmup, "wsd": warmup_stable_decay}


def lr_multiplier(schedule: str, total_steps: int, warmup_ratio: float = 0.03, decay_ratio: float = 0.2):
    """The multiplier function of the named schedule (SCHEDULES), for torch's LambdaLR; `decay_ratio` is wsd's."""
    if schedule == "wsd":
        return warmup_stable_decay(total_steps, warmup_ratio, decay_ratio)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule](total_steps, warmup_ratio)


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
