"""LLaVA: a CLIP vision tower, a projector, and a LLaMA decoder that reads image features as if they were words.

    model = LlavaForConditionalGeneration(config)
    out = model(input_ids, pixel_values, attention_mask, labels)         # out.loss, out.logits
    gen = model.generate(prompt_ids, pixel_values, max_new_tokens=64)    # gen.tokens, gen.past_key_values

The sequence convention (docs/ARCHITECTURE.md): `input_ids` carry ONE placeholder token (`config.image_token_index`)
per image. The model replaces each placeholder by that image's `num_image_tokens` projected feature vectors, so a
row of T tokens with k images becomes T - k + k * num_image_tokens positions inside the language model. Images
(`pixel_values`, (N, 3, H, W)) are consumed in placeholder order: row 0's placeholders left to right, then row 1's.
Image positions get label -100 (nothing to predict there) and the segment id of their placeholder.

The state dict is the HF llava layout: vision_tower.vision_model.*, multi_modal_projector.*, language_model.model.*,
language_model.lm_head.weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from llava_mini.model.clip import CLIPVisionModel
from llava_mini.model.config import LlavaConfig
from llava_mini.model.llama import GenerationOutput, KVCache, LlamaForCausalLM
from llava_mini.model.lm_loss import IGNORE_INDEX
from llava_mini.model.projector import LlavaMultiModalProjector


@dataclass
class LlavaOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None                  # (B, T_expanded, vocab); None with return_logits=False
    past_key_values: KVCache | None = None
    attentions: tuple | None = None              # per layer (B, H, T_expanded, S), with output_attentions=True
    labels: torch.Tensor | None = None           # (B, T_expanded): the labels after image expansion
    attention_mask: torch.Tensor | None = None   # (B, T_expanded): segment ids after image expansion


@dataclass
class MergedInputs:
    inputs_embeds: torch.Tensor                  # (B, T_expanded, text_hidden)
    attention_mask: torch.Tensor                 # (B, T_expanded) segment ids, 0 = padding
    labels: torch.Tensor | None                  # (B, T_expanded) or None


class LlavaForConditionalGeneration(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = LlamaForCausalLM(config.text_config)

    # ---- images -> language-model vectors ------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_image_tokens, text_hidden). The tower runs in its own dtype; its features are
        cast to the projector's (= the LLM's) dtype. A frozen tower runs without autograd: no activation memory."""
        tower_trains = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(tower_trains and torch.is_grad_enabled()):
            features = self.vision_tower.select_features(pixel_values, self.config.vision_feature_layer,
                                                         self.config.vision_feature_select_strategy)
        features = features.to(self.multi_modal_projector.linear_1.weight.dtype)     # (N, P, vision_hidden)
        return self.multi_modal_projector(features)                                  # (N, P, text_hidden)

    # ---- the splice: one placeholder per image -> the image's feature sequence -------------------------------------

    def merge_image_features(self, input_ids, image_features=None, attention_mask=None, labels=None) -> MergedInputs:
        """Replace every placeholder in `input_ids` (B, T) by the next image's features, then right-pad the rows.

        image_features: (N, P, hidden) in placeholder order across the batch, or None when there are no images.
        attention_mask: (B, T) segment ids (None = all 1); labels: (B, T) or None.
        Padding already in the input (segment 0) stays where it is; the rows are then right-padded to one length.
        """
        B, T = input_ids.shape
        image_token = self.config.image_token_index
        is_image = input_ids == image_token                                          # (B, T)
        n_placeholders, n_images = int(is_image.sum()), 0 if image_features is None else image_features.shape[0]
        if n_placeholders != n_images:
            raise ValueError(f"the input has {n_placeholders} image placeholder(s) (token id {image_token}) but "
                             f"{n_images} image(s) were given; each image needs exactly one placeholder")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)

        # 1. Embed the text. The placeholder id may lie outside the embedding table; it is replaced anyway.
        embed = self.language_model.model.embed_tokens
        text_embeds = embed(input_ids.masked_fill(is_image, 0))                      # (B, T, hidden)

        # 2. Walk each row and cut it at its placeholders: text piece, image, text piece, image, ...
        rows_embeds, rows_seg, rows_labels = [], [], []
        next_image = 0
        for b in range(B):
            pieces_embeds, pieces_seg, pieces_labels = [], [], []
            start = 0
            for pos in is_image[b].nonzero().flatten().tolist() + [T]:
                # the text from `start` up to (not including) this placeholder
                pieces_embeds.append(text_embeds[b, start:pos])
                pieces_seg.append(attention_mask[b, start:pos])
                if labels is not None:
                    pieces_labels.append(labels[b, start:pos])
                if pos == T:
                    break
                # the image: its feature vectors, the placeholder's segment id, no labels
                image = image_features[next_image].to(text_embeds.dtype)             # (P, hidden)
                next_image += 1
                pieces_embeds.append(image)
                pieces_seg.append(attention_mask[b, pos].repeat(len(image)))
                if labels is not None:
                    pieces_labels.append(torch.full((len(image),), IGNORE_INDEX, dtype=labels.dtype,
                                                    device=labels.device))
                start = pos + 1
            rows_embeds.append(torch.cat(pieces_embeds))
            rows_seg.append(torch.cat(pieces_seg))
            if labels is not None:
                rows_labels.append(torch.cat(pieces_labels))

        # 3. Rows now differ in length: right-pad them (embedding 0, segment 0 = padding, label -100).
        length = max(len(r) for r in rows_embeds)
        inputs_embeds = text_embeds.new_zeros(B, length, text_embeds.shape[-1])
        segment_ids = attention_mask.new_zeros(B, length)
        new_labels = None if labels is None else labels.new_full((B, length), IGNORE_INDEX)
        for b in range(B):
            n = len(rows_embeds[b])
            inputs_embeds[b, :n], segment_ids[b, :n] = rows_embeds[b], rows_seg[b]
            if labels is not None:
                new_labels[b, :n] = rows_labels[b]
        return MergedInputs(inputs_embeds, segment_ids, new_labels)

    def prepare_inputs(self, input_ids, pixel_values=None, attention_mask=None, labels=None) -> MergedInputs:
        image_features = self.encode_images(pixel_values) if pixel_values is not None else None
        return self.merge_image_features(input_ids, image_features, attention_mask, labels)

    # ---- training / scoring -------------------------------------------------------------------------------------

    def forward(self, input_ids, pixel_values=None, attention_mask=None, labels=None, past_key_values=None,
                use_cache=False, output_attentions=False, return_logits: bool = True,
                answer_weighting: float = 0.0) -> LlavaOutput:
        """input_ids (B, T) with one placeholder per image; attention_mask (B, T) segment ids of these tokens
        (with a KV cache: of the new tokens only); labels (B, T) or None. Logits/labels come back expanded.
        return_logits=False: the loss only, computed at the trained positions (training; see LlamaForCausalLM).
        answer_weighting: how the loss averages over the answers' tokens (lm_loss.answer_weights)."""
        merged = self.prepare_inputs(input_ids, pixel_values, attention_mask, labels)
        out = self.language_model(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask,
                                  past_key_values=past_key_values, use_cache=use_cache, labels=merged.labels,
                                  output_attentions=output_attentions, return_logits=return_logits,
                                  answer_weighting=answer_weighting)
        return LlavaOutput(out.loss, out.logits, out.past_key_values, out.attentions, merged.labels,
                           merged.attention_mask)

    # ---- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, input_ids, pixel_values=None, attention_mask=None, max_new_tokens=64, temperature=0.0,
                 top_p=1.0, stop_token_ids=None, streamer=None, past_key_values=None, generator=None,
                 static_cache: bool | None = None) -> GenerationOutput:
        """Answer a prompt (or a right-padded batch of prompts). Returns GenerationOutput(tokens, past_key_values):
        `tokens[b]` are row b's new ids without the stop token; the cache holds everything so far, so the next
        chat turn passes it back with only the new turn's ids (which may carry new image placeholders).
        Defaults: greedy (temperature 0), stop at the LLM's eos_token_id; streamer(token_id) per new token."""
        merged = self.prepare_inputs(input_ids, pixel_values, attention_mask)
        return self.language_model.generate(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask,
                                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                            stop_token_ids=stop_token_ids, streamer=streamer,
                                            past_key_values=past_key_values, generator=generator,
                                            static_cache=static_cache)
