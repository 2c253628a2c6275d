"""CLIP: the vision tower LLaVA looks through, the text tower (only to pretrain tiny CLIPs) and the contrastive loss.

Attribute names follow Hugging Face's CLIPVisionModel / CLIPTextModel / CLIPModel, so their state dicts load with
strict=True (note the real key `pre_layrnorm`, misspelling included).

    tower = CLIPVisionModel(VisionConfig(...))
    feats = tower.select_features(pixel_values)        # (N, num_patches, hidden): LLaVA's input, layer -2, CLS dropped

Both towers are the same pre-norm Transformer encoder: x + attn(ln1(x)), then x + mlp(ln2(x)). The vision tower cuts
the image into patches and prepends a learned CLS token; the text tower embeds tokens and attends causally.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llava_mini.model.attention import attention, build_mask
from llava_mini.model.config import CLIPConfig, CLIPTextConfig, VisionConfig


def quick_gelu(x):
    """OpenAI CLIP's GELU approximation."""
    return x * torch.sigmoid(1.702 * x)


# Activation functions by their Hugging Face names (`hidden_act`, `projector_hidden_act`).
ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu, "relu": F.relu, "silu": F.silu, "linear": lambda x: x}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class CLIPAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.attention_backend = "sdpa"

    def forward(self, x, mask=None):
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)       # (B, H, T, D)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = attention(q, k, v, mask, self.attention_backend)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, C))


class CLIPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.act = get_activation(act)
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig | CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config.hidden_size, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: VisionConfig | CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, mask=None, num_layers: int | None = None):
        """Run the first `num_layers` layers (all by default). Returns every hidden state: [input, after layer 1, ...]."""
        hidden_states = [x]
        for layer in self.layers[:num_layers]:
            x = layer(x, mask)
            hidden_states.append(x)
        return hidden_states


@dataclass
class CLIPOutput:
    last_hidden_state: torch.Tensor               # (B, T, hidden): vision before post_layernorm, text after final_layer_norm
    pooler_output: torch.Tensor                   # (B, hidden): CLS (vision, post-normed) or EOS token (text)
    hidden_states: tuple | None = None            # num_layers + 1 tensors; [0] is the embedding output


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size))
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.num_patches + 1, config.hidden_size)

    def forward(self, pixel_values):
        if pixel_values.shape[-2:] != (self.config.image_size, self.config.image_size):
            raise ValueError(f"this CLIP tower takes {self.config.image_size}x{self.config.image_size} images, "
                             f"got {tuple(pixel_values.shape[-2:])}")
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))   # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)                                               # (B, num_patches, C)
        cls = self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype)               # (B, 1, C)
        x = torch.cat([cls, x], dim=1)                                                 # (B, 1 + num_patches, C)
        return x + self.position_embedding.weight


class CLIPVisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values, output_hidden_states=False, num_layers=None) -> CLIPOutput:
        hidden_states = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)), num_layers=num_layers)
        last = hidden_states[-1]
        return CLIPOutput(last, self.post_layernorm(last[:, 0]), tuple(hidden_states) if output_hidden_states else None)


class CLIPVisionModel(nn.Module):
    """The vision tower alone (what LLaVA uses)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config)

    def forward(self, pixel_values, output_hidden_states=False) -> CLIPOutput:
        return self.vision_model(pixel_values, output_hidden_states)

    def select_features(self, pixel_values, layer: int = -2, strategy: str = "default"):
        """LLaVA's image features: hidden_states[layer] (0 = embedding output), CLS dropped ("default") or kept
        ("full"). Layers after the chosen one are skipped, not computed. (N, 3, H, W) -> (N, P, hidden)."""
        n = len(self.vision_model.encoder.layers)
        index = layer if layer >= 0 else n + 1 + layer          # position in [embeddings, layer 1, ..., layer n]
        if not 0 <= index <= n:
            raise ValueError(f"vision_feature_layer {layer} is out of range for a {n}-layer tower")
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy {strategy!r} must be 'default' or 'full'")
        features = self.vision_model(pixel_values, num_layers=index).last_hidden_state      # (N, 1 + P, hidden)
        return features[:, 1:] if strategy == "default" else features


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids):
        T = input_ids.shape[1]
        if T > self.position_embedding.num_embeddings:
            raise ValueError(f"text of {T} tokens is longer than max_position_embeddings="
                             f"{self.position_embedding.num_embeddings}")
        return self.token_embedding(input_ids) + self.position_embedding.weight[:T]     # (B, T, hidden)


class CLIPTextTransformer(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False) -> CLIPOutput:
        """input_ids (B, T); attention_mask (B, T) with 0 at padding (or None)."""
        B = input_ids.shape[0]
        x = self.embeddings(input_ids)
        seg = torch.ones_like(input_ids) if attention_mask is None else (attention_mask != 0).long()
        hidden_states = self.encoder(x, build_mask(seg, causal=True))
        last = self.final_layer_norm(hidden_states[-1])
        # Pool at the end-of-text token. Checkpoints from before transformers PR #24773 say eos_token_id=2, which is
        # wrong for CLIP's vocabulary; HF then takes the highest token id (OpenAI's EOT is the largest id), and we
        # match that. Otherwise: the first occurrence of eos_token_id (padding may reuse the EOS id).
        if self.config.eos_token_id == 2:
            eos_pos = input_ids.argmax(dim=-1)
        else:
            eos_pos = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)
        pooled = last[torch.arange(B, device=last.device), eos_pos]                  # (B, hidden)
        return CLIPOutput(last, pooled, tuple(hidden_states) if output_hidden_states else None)


class CLIPTextModel(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False) -> CLIPOutput:
        return self.text_model(input_ids, attention_mask, output_hidden_states)


class CLIPModel(nn.Module):
    """Both towers and their projections into a shared embedding space; trained with `clip_loss`."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config.vision_config)
        self.text_model = CLIPTextTransformer(config.text_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))

    def get_image_features(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values).pooler_output)      # (N_img, proj)

    def get_text_features(self, input_ids, attention_mask=None):
        return self.text_projection(self.text_model(input_ids, attention_mask).pooler_output)  # (N_txt, proj)

    def forward(self, pixel_values, input_ids, attention_mask=None):
        """Returns logits_per_image (N_img, N_txt): scaled cosine similarity of every image with every text."""
        image = F.normalize(self.get_image_features(pixel_values), dim=-1)
        text = F.normalize(self.get_text_features(input_ids, attention_mask), dim=-1)
        return image @ text.t() * self.logit_scale.exp()


def clip_loss(logits_per_image):
    """Symmetric contrastive loss: image i should pick text i among the batch, and text i image i."""
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.t(), targets)) / 2
