"""Attention: one entry point, several backends, and the segment-id masks that every model here uses.

    out = attention(q, k, v, mask)                      # q (B, H, T, D), k/v (B, H_kv, S, D) -> (B, H, T, D)
    out, probs = eager_attention(q, k, v, mask)         # the readable reference, also returns the probabilities

Backends (pick one per model with `set_attention_backend(model, "eager")`):
- "eager": scores = q k^T / sqrt(D), softmax in fp32, weighted sum of v. Every step is visible; use it to read,
  to debug, and to look at attention maps.
- "sdpa": `torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel. Same numbers (up to
  float rounding), less memory, faster.
- "flex": FlexAttention (`torch.nn.attention.flex_attention`) compiled by torch.compile into one fused kernel for our
  mask: the segment-id mask becomes a BlockMask, which lets the kernel skip every block of keys a query may not see
  (other samples in a packed row, padding, the future), and grouped-query attention reads the shared key/value heads
  without copying them. It compiles once per shape (seconds on a CPU), and in torch 2.13 it has no backward pass on
  the CPU: there it is for inference; training with it needs a GPU.

Masks are boolean, shaped (B, 1, T, S), True = "this query may look at this key". They are built from *segment
ids* (docs/ARCHITECTURE.md): 0 marks padding, 1..k the k-th sample packed into a row. Query i may attend key j
when both belong to the same non-zero segment and j is not in the future of i. The same rule covers plain
causal attention, padding (left or right), packing several samples into one row, and a KV cache (the keys
then start with the cached tokens).
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F

BACKENDS = ("eager", "sdpa", "flex")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Grouped-query attention: each key/value head serves `n_rep` consecutive query heads.
    (B, H_kv, S, D) -> (B, H_kv * n_rep, S, D); kv head j is used by query heads j*n_rep .. (j+1)*n_rep - 1."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


def eager_attention(q, k, v, mask=None, causal=False, scale=None):
    """The reference implementation, written to be read. Returns (output (B, H, T, D), probs (B, H, T, S))."""
    B, H, T, D = q.shape
    S = k.shape[2]
    k = repeat_kv(k, H // k.shape[1])                        # (B, H, S, D)
    v = repeat_kv(v, H // v.shape[1])
    scale = 1.0 / math.sqrt(D) if scale is None else scale

    scores = (q @ k.transpose(-2, -1)) * scale               # (B, H, T, S): how well query t matches key s
    if causal:                                               # query t sits at position S - T + t among the keys
        mask = causal_mask(T, S, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # Softmax in fp32 for stability, then back to the working dtype. A fully masked row (a padding query)
    # would be softmax(all -inf) = NaN; nan_to_num turns it into zeros, so padding never poisons anything.
    probs = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    out = probs @ v                                          # (B, H, T, D): weighted average of the values
    return out, probs


def sdpa_attention(q, k, v, mask=None, causal=False, scale=None):
    """Fused attention from PyTorch; same inputs and result as `eager_attention` (without the probabilities)."""
    H = q.shape[1]
    k = repeat_kv(k, H // k.shape[1])
    v = repeat_kv(v, H // v.shape[1])
    empty_rows = None
    if mask is not None:
        # Fused kernels may return NaN for a query that may attend nothing (padding). Let such rows attend
        # everything (any finite result) and zero them afterwards, as the eager path does.
        empty_rows = ~mask.any(dim=-1, keepdim=True)         # (B, 1, T, 1)
        mask = mask | empty_rows
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return out


FLEX_BLOCK = 128                          # FlexAttention's block size: we pad queries and keys to multiples of it
_compiled_flex = None
_last_block_mask = (None, None, None)     # (a weak reference to the mask or the causal key, its BlockMask)


def _padded(n: int) -> int:
    return n if n == 1 else -(-n // FLEX_BLOCK) * FLEX_BLOCK


def _block_mask(mask, causal, B, T, S, device):
    """The BlockMask of a bool mask (B, 1, T, S) or of the causal rule, on queries and keys padded to whole blocks
    (the padding may attend nothing and is never attended). Built once and reused: every layer of a forward pass
    gets the same mask object (or the same causal shape), so only the first layer pays for it."""
    global _last_block_mask
    from torch.nn.attention.flex_attention import create_block_mask
    rule = "causal" if causal else "full" if mask is None else None    # a rule, or a mask tensor
    key = (rule, B, T, S, str(device)) if rule else None
    ref, cached_key, block_mask = _last_block_mask
    if (rule and cached_key == key) or (not rule and ref is not None and ref() is mask):
        return block_mask
    if rule == "causal":
        mask = causal_mask(T, S, device).expand(B, 1, T, S)
    elif rule == "full":                                     # every query sees every key (CLIP, one decode step)
        mask = torch.ones(B, 1, T, S, dtype=torch.bool, device=device)
    allowed = torch.zeros(B, _padded(T), _padded(S), dtype=torch.bool, device=device)
    allowed[:, :T, :S] = mask[:, 0]
    block_mask = create_block_mask(lambda b, h, q, kv: allowed[b, q, kv], B, None, allowed.shape[1],
                                   allowed.shape[2], device=device)
    _last_block_mask = (None if rule else weakref.ref(mask), key, block_mask)
    return block_mask


def flex_attention(q, k, v, mask=None, causal=False, scale=None):
    """FlexAttention under torch.compile (one compiled function per process); same inputs and result as
    `eager_attention` (without the probabilities). A query that may attend nothing (padding) gets zeros.

    Queries and keys are padded to whole 128-blocks: the shapes then repeat (one compile serves every length up to
    the next block), and on the CPU torch 2.13's compiled kernel gives wrong numbers for some key lengths (24, 40, 56
    with 16-dim heads: tests/test_attention.py), which whole blocks avoid."""
    global _compiled_flex
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("the flex attention backend has no backward pass on the CPU (torch "
                         f"{torch.__version__.split('+')[0]}); train with the sdpa backend here, or on a GPU")
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention as flex
        _compiled_flex = torch.compile(flex, dynamic=False)   # dynamic shapes do not compile on the CPU in 2.13
    B, H, T, _ = q.shape
    S = k.shape[2]
    block_mask = _block_mask(mask, causal, B, T, S, q.device)
    pad_t, pad_s = _padded(T) - T, _padded(S) - S
    q = F.pad(q, (0, 0, 0, pad_t))                            # (B, H, T', D)
    k, v = F.pad(k, (0, 0, 0, pad_s)), F.pad(v, (0, 0, 0, pad_s))   # (B, H_kv, S', D)
    out = _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != H)
    return out[:, :, :T]


def attention(q, k, v, mask=None, backend="sdpa", causal=False, scale=None):
    """q (B, H, T, D), k/v (B, H_kv, S, D), mask bool (B, 1, T, S) or None -> (B, H, T, D).

    `causal=True` with `mask=None` is the fast path for an unpadded batch with no cache (T == S):
    the kernels then apply the causal rule themselves."""
    if causal and mask is not None:
        raise ValueError("pass either causal=True or a mask, not both (fold causality into the mask)")
    if causal and q.shape[2] != k.shape[2]:
        # the fused kernels align a causal mask top-left, the eager path bottom-right: only T == S means one thing
        raise ValueError(f"causal=True needs as many queries as keys, got {q.shape[2]} and {k.shape[2]}; "
                         "with a KV cache pass a mask from build_mask instead")
    if backend == "eager":
        return eager_attention(q, k, v, mask, causal, scale)[0]
    if backend == "sdpa":
        return sdpa_attention(q, k, v, mask, causal, scale)
    if backend == "flex":
        return flex_attention(q, k, v, mask, causal, scale)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def causal_mask(T: int, S: int, device=None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """(1, 1, T, S) lower-triangular mask: query t may see keys up to its own index among the keys, which is
    query_positions[t] (T,), by default S - T + t (the T queries are the last T of the S keys)."""
    q_pos = (torch.arange(S - T, S, device=device) if query_positions is None else query_positions)[:, None]
    k_pos = torch.arange(S, device=device)[None, :]
    return (k_pos <= q_pos)[None, None]


def build_mask(segment_ids_q: torch.Tensor, segment_ids_k: torch.Tensor | None = None, causal: bool = True,
               query_positions: torch.Tensor | None = None):
    """Attention mask from segment ids.

    segment_ids_q: (B, T) ids of the queries (the new tokens).
    segment_ids_k: (B, S) ids of the keys, S >= T; with a KV cache these are the cached ids followed by the
    new ones, so the queries are the last T keys. None means "the keys are the queries" (S == T).
    query_positions: (T,) the queries' indices among the keys when they are not the last T (a static KV cache
    writes them into the middle of its slots; the empty slots after them have segment id 0).
    Returns bool (B, 1, T, S): True where query i may attend key j, i.e. seg_k[j] == seg_q[i] != 0
    (and j <= i when causal).
    """
    if segment_ids_k is None:
        segment_ids_k = segment_ids_q
    T, S = segment_ids_q.shape[1], segment_ids_k.shape[1]
    if S < T:
        raise ValueError(f"build_mask: {S} keys cannot hold {T} queries (keys must end with the queries)")
    same = segment_ids_q[:, :, None] == segment_ids_k[:, None, :]        # (B, T, S)
    mask = same & (segment_ids_q[:, :, None] != 0)
    if causal:
        mask = mask & causal_mask(T, S, segment_ids_q.device, query_positions)[0]
    return mask[:, None]                                                  # (B, 1, T, S)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 in every segment, read off a causal mask: a query's position is the
    number of earlier keys of its own segment. (B, 1, T, S) -> (B, T); padding queries get 0."""
    return (mask[:, 0].sum(dim=-1) - 1).clamp(min=0)


def set_attention_backend(module: torch.nn.Module, backend: str) -> torch.nn.Module:
    """Switch every attention layer inside `module` (anything with an `attention_backend` attribute)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    for m in module.modules():
        if hasattr(m, "attention_backend"):
            m.attention_backend = backend
    return module
