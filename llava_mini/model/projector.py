"""The projector: maps CLIP image features into the language model's embedding space.

- "linear" (LLaVA-1): one Linear(vision_hidden, text_hidden); only `linear_1`.
- "mlp2x_<act>" (LLaVA-1.5 uses mlp2x_gelu): Linear -> act -> Linear, both with bias. <act> is an HF activation name
  (gelu, quick_gelu, relu, ..., or "linear" = identity, which HF's `projector_hidden_act="linear"` means).

Attribute names are HF's LlavaMultiModalProjector ones (`linear_1`, `linear_2`), so its weights load as they are.
"""
from __future__ import annotations

import torch.nn as nn

from llava_mini.model.clip import get_activation
from llava_mini.model.config import LlavaConfig


class LlavaMultiModalProjector(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        vision, text = config.vision_config.hidden_size, config.text_config.hidden_size
        self.projector_type = config.projector_type
        self.linear_1 = nn.Linear(vision, text)
        if config.projector_type == "linear":
            return
        if not config.projector_type.startswith("mlp2x_"):
            raise ValueError(f"unknown projector_type {config.projector_type!r}: use 'linear' or 'mlp2x_<act>'")
        self.act = get_activation(config.projector_type.removeprefix("mlp2x_"))
        self.linear_2 = nn.Linear(text, text)

    def forward(self, image_features):
        """(N, P, vision_hidden) -> (N, P, text_hidden)."""
        x = self.linear_1(image_features)
        if self.projector_type == "linear":
            return x
        return self.linear_2(self.act(x))

    def extra_repr(self) -> str:
        return f"projector_type={self.projector_type!r}"
