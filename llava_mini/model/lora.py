"""LoRA (Hu et al., 2021), as LLaVA-1.5's finetune_lora.sh trains stage 2: the LLM's weights stay frozen and each
of its linear layers learns a low-rank update instead.

    names = apply_lora(model.language_model, r=128, alpha=256, dropout=0.05)   # every linear layer but lm_head
    merge_lora(model)                 # W <- W + (alpha / r) B A: plain nn.Linear layers again, the same function

A LoRALinear keeps the base layer's `weight` and `bias` under their own names, so the model's state dict keeps
the HF key names (`...q_proj.weight`) and gains `...q_proj.lora_A.weight` (r, in) and `...q_proj.lora_B.weight`
(out, r): the names PEFT saves, less PEFT's adapter name.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The linear layers of a LLaMA decoder layer (model/llama.py): LLaVA's find_all_linear_names, which leaves out
# lm_head and everything outside the language model (tower, projector).
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """y = x W^T + b + (alpha / r) * B(A(dropout(x))), with W and b the frozen base layer's, A initialised as
    nn.Linear initialises a weight (PEFT's default) and B at zero, so a fresh adapter changes nothing."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias              # the same Parameters: no copy
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)    # weight (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)   # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r, self.alpha, self.scaling = r, alpha, alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """(out, in): what the adapter adds to W."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}"


def apply_lora(module: nn.Module, r: int, alpha: float, dropout: float = 0.0,
               targets: tuple[str, ...] = LLAMA_LINEAR) -> list[str]:
    """Replace, in place, every nn.Linear under `module` whose own name is in `targets` by a LoRALinear around it.
    Returns the replaced layers' paths (relative to `module`). lm_head is never a target: LLaVA leaves it out."""
    found = [(name, m) for name, m in module.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets and not name.endswith("lm_head")]
    if not found:
        raise ValueError(f"no linear layer named {', '.join(targets)} to put LoRA on")
    for name, linear in found:
        parent_name, _, child = name.rpartition(".")
        lora = LoRALinear(linear, r, alpha, dropout).train(linear.training)   # an eval model stays in eval
        setattr(module.get_submodule(parent_name) if parent_name else module, child, lora)
    return [name for name, _ in found]


def lora_layers(module: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for m in lora_layers(module).values() for p in (m.lora_A.weight, m.lora_B.weight)]


@torch.no_grad()
def merge_lora(module: nn.Module) -> int:
    """Fold every adapter into its base weight (W + (alpha / r) B A) and put a plain nn.Linear back in its place;
    the state dict is then exactly the base layout again. Returns how many layers were merged."""
    layers = lora_layers(module)
    for name, lora in layers.items():
        linear = nn.Linear(lora.in_features, lora.out_features, bias=lora.bias is not None, device="meta")
        linear.train(lora.training)
        merged = lora.weight.float() + lora.delta_weight().float()          # in float32, then the base's dtype
        linear.weight = nn.Parameter(merged.to(lora.weight.dtype), requires_grad=False)
        if lora.bias is not None:
            linear.bias = lora.bias
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, linear)
    return len(layers)
