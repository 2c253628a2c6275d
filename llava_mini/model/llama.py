"""The LLaMA / Vicuna decoder: RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU, KV cache.

Attribute names follow Hugging Face's LlamaForCausalLM, so its state dict loads with strict=True:

    model = LlamaForCausalLM(TextConfig(...))
    out = model(input_ids, labels=labels)                 # out.loss, out.logits (B, T, vocab)
    out = model(prompt_ids, use_cache=True)               # out.past_key_values: a KVCache
    out = model(next_ids, past_key_values=out.past_key_values, use_cache=True)

`attention_mask` holds *segment ids* for the tokens passed in this call (docs/ARCHITECTURE.md): 0 = padding,
1..k = the k-th sample packed into the row. Positions restart at 0 in every segment. With a KV cache, the cache
remembers the segment ids of the tokens it holds, so `attention_mask` only ever describes the new tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llava_mini.model.attention import attention, build_mask, eager_attention, positions_from_mask
from llava_mini.model.config import TextConfig
from llava_mini.model.kv_cache import KVCache, StaticKVCache
from llava_mini.model.lm_loss import IGNORE_INDEX, answer_weights, causal_lm_loss, next_token_targets, weighted_mean


class RMSNorm(nn.Module):
    """x / rms(x) * weight. Computed in fp32 and cast back *before* the weight, exactly as LLaMA does."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype):
    """Rotary embedding tables for the given positions: (B, T) -> cos, sin each (B, T, head_dim).
    Frequency i rotates the pair (x[i], x[i + head_dim/2]) by angle position * theta^(-2i/head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float()[:, :, None] * inv_freq[None, None, :]     # (B, T, head_dim/2), in fp32
    angles = torch.cat([angles, angles], dim=-1)                             # (B, T, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (HF's layout, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """x (B, H, T, D); cos/sin (B, T, D)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class LlamaAttention(nn.Module):
    def __init__(self, config: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.rope_theta = config.rope_theta
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=bias)
        self.attention_backend = "sdpa"

    def forward(self, x, cos, sin, mask, causal, cache: KVCache | StaticKVCache | None, output_attentions=False):
        """mask: bool (B, 1, T, S) or None; causal=True (only with mask None): plain causal over these T tokens."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)       # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)    # (B, H_kv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                                    # (B, H_kv, S, D)
        probs = None
        if output_attentions:
            out, probs = eager_attention(q, k, v, mask, causal)
        else:
            out = attention(q, k, v, mask, self.attention_backend, causal)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)            # (B, T, H * D)
        return self.o_proj(out), probs


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: TextConfig):
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (LLaMA uses 'silu')")
        h, m, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, m, bias=bias)
        self.up_proj = nn.Linear(h, m, bias=bias)
        self.down_proj = nn.Linear(m, h, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, causal, cache=None, output_attentions=False):
        attn_out, probs = self.self_attn(self.input_layernorm(x), cos, sin, mask, causal, cache, output_attentions)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, probs


@dataclass
class ModelOutput:
    last_hidden_state: torch.Tensor                      # (B, T, hidden)
    past_key_values: KVCache | None = None
    attentions: tuple | None = None                      # per layer (B, H, T, S), with output_attentions=True


@dataclass
class GenerationOutput:
    tokens: list[list[int]]           # the new token ids of each row, without the stop token
    past_key_values: KVCache          # holds the prompt *and* every generated token (stop token included):
                                      # the next turn's ids go straight after it


@dataclass
class CausalLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None                          # (B, T, vocab); None with return_logits=False
    past_key_values: KVCache | None = None
    attentions: tuple | None = None


class LlamaModel(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False   # recompute each layer in backward: less memory, ~30% more time

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | StaticKVCache | None = None, use_cache=False,
                output_attentions=False) -> ModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds     # (B, T, hidden)
        B, T, _ = x.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(len(self.layers))

        # Who may attend whom, from segment ids (all 1 when not given); the cache remembers the ids of its tokens.
        seg = attention_mask if attention_mask is not None else torch.ones(B, T, dtype=torch.long, device=x.device)
        if seg.shape != (B, T):
            raise ValueError(f"attention_mask must be (B, T) = {(B, T)} segment ids of the new tokens, got "
                             f"{tuple(seg.shape)}")
        seg_k = cache.add_segment_ids(seg) if cache is not None else seg                # (B, S), S = past + T
        query_positions = cache.query_positions(T) if cache is not None else None
        mask = build_mask(seg, seg_k, query_positions=query_positions)                   # (B, 1, T, S)
        if position_ids is None:
            position_ids = positions_from_mask(mask)                                     # restart in each segment
        # Fused kernels are much faster without an explicit mask, so drop it when it says nothing special:
        # one sample per row, right-padded or not, and nothing cached -> plain causal; a decode step that may see
        # every key -> no mask. (Right padding: every real token sees only real tokens before it either way; the
        # padding positions then see the tokens before them instead of nothing, and no loss or output reads them.)
        # A static cache always keeps its mask: its empty slots must stay unseen, and a step without
        # data-dependent branches is one that torch.compile captures whole.
        causal = False
        if isinstance(cache, StaticKVCache):
            pass
        elif cache is None and attention_mask is None:      # known without looking at the data: no graph break
            mask, causal = None, True
        elif seg_k.shape[1] == T and right_padded_single(seg):
            mask, causal = None, True
        elif T == 1 and bool(mask.all()):
            mask = None
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)

        all_probs = []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None:
                x, probs = checkpoint(layer, x, cos, sin, mask, causal, cache, output_attentions, use_reentrant=False)
            else:
                x, probs = layer(x, cos, sin, mask, causal, cache, output_attentions)
            all_probs.append(probs)
        x = self.norm(x)
        return ModelOutput(x, cache if use_cache else None, tuple(all_probs) if output_attentions else None)


def right_padded_single(seg: torch.Tensor) -> bool:
    """(B, T) segment ids: one sample per row, starting at position 0, followed by padding only (1...1 0...0)."""
    return bool((seg[:, 0] == 1).all() and (seg <= 1).all() and (seg[:, 1:] <= seg[:, :-1]).all())


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._compiled_step = None            # compile_decoding() sets it
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.tie_weights()
            # HF checkpoints of tied models have no `lm_head.weight`: fill it in from the embedding when loading,
            # and re-tie afterwards (load_state_dict(assign=True) would otherwise leave two separate parameters).
            self.register_load_state_dict_pre_hook(self._fill_tied_lm_head)
            self.register_load_state_dict_post_hook(lambda module, incompatible: module.tie_weights())

    def _init_weights(self, module):
        """HF's LLaMA initialisation, N(0, initializer_range) for every matrix. PyTorch's default N(0, 1) embedding
        would, tied to lm_head, start an untrained model at a loss near 60 instead of log(vocab_size)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def tie_weights(self):
        self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def _fill_tied_lm_head(module, state_dict, prefix, *args):
        head, embed = prefix + "lm_head.weight", prefix + "model.embed_tokens.weight"
        if head not in state_dict and embed in state_dict:
            state_dict[head] = state_dict[embed]

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False, labels=None, output_attentions=False,
                return_logits: bool = True, answer_weighting: float = 0.0) -> CausalLMOutput:
        """return_logits=False (training, with labels): the same loss, but the vocabulary projection runs only at
        the positions that predict a trained token (a stage-2 sample trains ~10% of its tokens), and logits is None.
        answer_weighting: how the loss averages over tokens (answer_weights; 0, every token the same, is HF's)."""
        out = self.model(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values, use_cache,
                         output_attentions)
        if labels is not None and not return_logits:
            targets = next_token_targets(labels, attention_mask)                         # (B, T-1)
            keep = targets != IGNORE_INDEX
            hidden = out.last_hidden_state[:, :-1][keep]                                 # (N_trained, hidden)
            logits = self.lm_head(hidden).float()                                        # (N_trained, vocab)
            if answer_weighting == 0:
                loss = F.cross_entropy(logits, targets[keep])
            else:
                loss = weighted_mean(F.cross_entropy(logits, targets[keep], reduction="none"),
                                     answer_weights(targets, answer_weighting)[keep])
            return CausalLMOutput(loss, None, out.past_key_values, out.attentions)
        logits = self.lm_head(out.last_hidden_state)                                     # (B, T, vocab)
        loss = causal_lm_loss(logits, labels, attention_mask, answer_weighting) if labels is not None else None
        return CausalLMOutput(loss, logits, out.past_key_values, out.attentions)

    def decode_step(self, next_ids: torch.Tensor, segment_ids: torch.Tensor, cache) -> torch.Tensor:
        """One token per row through the decoder: (B,) ids and their (B, 1) segment ids -> (B, vocab) logits."""
        out = self.model(next_ids[:, None], attention_mask=segment_ids, past_key_values=cache, use_cache=True)
        return self.lm_head(out.last_hidden_state[:, -1])

    def compile_decoding(self) -> "LlamaForCausalLM":
        """Compile decode_step with torch.compile, and let generate() decode into a StaticKVCache from now on.

        With a static cache every step has the same shapes (the buffers, a (B, 1) token, a 0-d write position),
        so the step compiles once per batch size and cache length into one graph (fullgraph: a graph break would be
        an error, not a silent slowdown). The first generate() pays for the compile."""
        self._compiled_step = torch.compile(self.decode_step, dynamic=False, fullgraph=True)
        return self

    @property
    def decoding_compiled(self) -> bool:
        return self._compiled_step is not None

    def new_cache(self, batch_size: int, tokens: int, static: bool = False) -> KVCache | StaticKVCache:
        """An empty cache for `tokens` tokens per row: a growing KVCache, or a StaticKVCache of whole 128-slot
        blocks (so that prompts of similar length share one compiled step)."""
        if not static:
            return KVCache(len(self.model.layers))
        weight = self.model.embed_tokens.weight
        return StaticKVCache.for_model(self.config, batch_size, -(-tokens // 128) * 128, weight.dtype, weight.device)

    @torch.no_grad()
    def generate(self, input_ids=None, inputs_embeds=None, attention_mask=None, max_new_tokens=64, temperature=0.0,
                 top_p=1.0, stop_token_ids=None, streamer=None, past_key_values=None, generator=None,
                 static_cache: bool | None = None):
        """Decode new tokens with a KV cache. Returns GenerationOutput(tokens, past_key_values).

        Batches are right-padded: `attention_mask` (segment ids) has 0 after each prompt's end. Nothing else is
        needed, because positions and masks come from segment ids: every row's new tokens go after the padding,
        which no one attends. To continue a conversation pass the returned cache back as `past_key_values`
        together with only the next turn's ids. `streamer(token_id)` is called for each new token (batch size 1).
        temperature 0 is greedy; otherwise sample from softmax(logits / temperature) restricted to the top-p mass.
        The prompt is one forward pass (prefill), then one decode_step per token. Without `past_key_values`, a new
        cache is made: static (preallocated) when `static_cache`, which defaults to "after compile_decoding()";
        decode steps into a static cache run the compiled step when there is one.
        """
        stop = set((self.config.eos_token_id,) if stop_token_ids is None else stop_token_ids) - {None}
        x = inputs_embeds if inputs_embeds is not None else input_ids
        B, T = x.shape[:2]
        if streamer is not None and B != 1:
            raise ValueError(f"streamer works with a single prompt, got a batch of {B}")
        seg = attention_mask if attention_mask is not None else torch.ones(B, T, dtype=torch.long, device=x.device)
        if not (seg != 0).any(dim=1).all():
            raise ValueError("generate: a prompt row is all padding (attention_mask is 0 everywhere)")
        last = T - 1 - (seg != 0).flip(1).int().argmax(dim=1)          # (B,) index of each row's last real token
        rows = torch.arange(B, device=x.device)
        gen_seg = seg[rows, last]                                       # new tokens join the prompt's segment
        compiled = self._compiled_step
        cache = past_key_values
        if cache is None:
            static = compiled is not None if static_cache is None else static_cache
            cache = self.new_cache(B, T + max_new_tokens, static)
        step = compiled if compiled is not None and isinstance(cache, StaticKVCache) else self.decode_step

        out = self.model(input_ids, inputs_embeds, attention_mask, past_key_values=cache, use_cache=True)
        logits = self.lm_head(out.last_hidden_state[rows, last])      # (B, vocab): next-token logits per row
        tokens = [[] for _ in range(B)]
        alive = torch.ones(B, dtype=torch.bool, device=x.device)
        stop_ids = torch.tensor(sorted(stop), device=x.device, dtype=torch.long)
        for _ in range(max_new_tokens):
            next_ids = sample_next_token(logits, temperature, top_p, generator)            # (B,)
            for b in alive.nonzero().flatten().tolist():
                token = next_ids[b].item()
                if token in stop:
                    continue
                tokens[b].append(token)
                if streamer is not None:
                    streamer(token)
            # Feed the new tokens (the stop token too: it belongs to the conversation); finished rows feed padding.
            step_seg = torch.where(alive, gen_seg, torch.zeros_like(gen_seg))[:, None]       # (B, 1)
            alive &= ~torch.isin(next_ids, stop_ids)
            logits = step(next_ids, step_seg, cache)
            if not alive.any():
                break
        return GenerationOutput(tokens, cache)


def sample_next_token(logits, temperature=0.0, top_p=1.0, generator=None):
    """(B, vocab) logits -> (B,) token ids. Greedy at temperature 0; else nucleus (top-p) sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest set of most likely tokens whose mass reaches top_p (the first token always stays).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
