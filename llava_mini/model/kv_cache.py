"""KV caches: the keys and values of every token a decoder has seen, so that each new token costs one step.

    cache = KVCache(num_layers)                                   # grows by concatenation: simple, any length
    cache = StaticKVCache.for_model(config, batch_size=1, max_len=512)   # preallocated: shapes never change

Both remember the *segment ids* of the tokens they hold (docs/ARCHITECTURE.md), so a forward pass with a cache only
ever describes its new tokens. A layer calls `update(layer, k, v)` and attends over what it returns.

Why two. The dynamic cache is the readable one: its keys are exactly the tokens so far. The static cache writes
into buffers of a fixed length instead, and its write position is a tensor, not a Python int: every decode step
then has the same shapes and the same Python control flow, which is what lets `torch.compile` turn the one-token
step into one graph that is compiled once and replayed for every token (no recompiles as the conversation grows).
The price is that each step attends over all `max_len` slots; the empty ones have segment id 0, which no query
ever attends, so the result is the same.
"""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every token seen so far, per layer, plus their segment ids.

    One cache holds a whole conversation: feed turn 1, generate, then feed turn 2's new tokens with the same
    cache and only the new tokens are computed. Tensors grow by concatenation (simple; fine at our sizes)."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers      # each (B, H_kv, S, D)
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.segment_ids: torch.Tensor | None = None                    # (B, S)

    def __len__(self) -> int:
        return 0 if self.segment_ids is None else self.segment_ids.shape[1]

    def add_segment_ids(self, segment_ids: torch.Tensor) -> torch.Tensor:
        """Append the new tokens' segment ids (once per forward); returns the ids of all keys (B, S)."""
        if self.segment_ids is not None and self.segment_ids.shape[0] != segment_ids.shape[0]:
            raise ValueError(f"KV cache holds batch size {self.segment_ids.shape[0]}, "
                             f"got new tokens for batch size {segment_ids.shape[0]}")
        self.segment_ids = segment_ids if self.segment_ids is None else torch.cat([self.segment_ids, segment_ids], 1)
        return self.segment_ids

    def query_positions(self, T: int) -> torch.Tensor | None:
        """Where the last T new tokens sit among the keys: None = the last T (the default of build_mask)."""
        return None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this layer's new keys/values and return all of them (cached + new)."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class StaticKVCache:
    """A KV cache in preallocated buffers of `max_len` slots per row: (B, H_kv, max_len, D) per layer.

    New tokens are written at `position` (a 0-d tensor); slots not yet written have segment id 0 and are never
    attended. update() returns the whole buffers, so attention always sees max_len keys."""

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype=torch.float32, device=None):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.segment_ids = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)   # (B, max_len)
        self.position = torch.zeros((), dtype=torch.long, device=device)    # the slot the next new token goes to
        self.max_len = max_len
        self._slots = None                                                  # (T,) slots of this forward's tokens

    @classmethod
    def for_model(cls, config, batch_size: int, max_len: int | None = None, dtype=torch.float32, device=None):
        """A cache for a TextConfig-shaped decoder; max_len defaults to its context length."""
        return cls(config.num_hidden_layers, batch_size, max_len or config.max_position_embeddings,
                   config.num_key_value_heads, config.head_dim, dtype, device)

    def __len__(self) -> int:
        return int(self.position)

    def add_segment_ids(self, segment_ids: torch.Tensor) -> torch.Tensor:
        """Write the new tokens' segment ids at `position` and move it on; returns the ids of all slots."""
        B, T = segment_ids.shape
        if B != self.segment_ids.shape[0]:
            raise ValueError(f"KV cache holds batch size {self.segment_ids.shape[0]}, "
                             f"got new tokens for batch size {B}")
        if not torch.compiler.is_compiling() and int(self.position) + T > self.max_len:
            raise ValueError(f"the static KV cache holds {self.max_len} tokens: {int(self.position)} are cached "
                             f"and {T} more do not fit")
        self._slots = self.position + torch.arange(T, device=segment_ids.device)    # (T,)
        self.segment_ids.index_copy_(1, self._slots, segment_ids)
        self.position += T
        return self.segment_ids

    def query_positions(self, T: int) -> torch.Tensor:
        """The slots of this forward's T new tokens (the causal rule: a query sees slots up to its own)."""
        return self._slots

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write this layer's new keys/values (B, H_kv, T, D) into their slots; return the whole buffers."""
        self.keys[layer].index_copy_(2, self._slots, k)
        self.values[layer].index_copy_(2, self._slots, v)
        return self.keys[layer], self.values[layer]
