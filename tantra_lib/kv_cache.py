"""A key/value cache for fast autoregressive generation.

When a language model generates token t+1 it needs the keys and values of positions 0..t,
which it already computed for the previous tokens: only the new token's query, key and value
are new. A KVCache keeps one layer's keys and values in buffers preallocated to the model's
block size, with a counter of how many positions are filled; each step writes the new keys
and values after the old ones and attends over everything cached. Queries are never cached:
each is used once, by the token that asked it.

Taught in lessons/09_kv_cache. Proven transparent (cached == uncached generation) in
tests/test_gpt.py.
"""

from __future__ import annotations

import torch

from .shortcut_guard import reference

__all__ = ["KVCache"]


@reference("KVCache")
class KVCache:
    """One layer's cache of keys and values.

    max_len: how many positions fit (the model's block_size). The buffers ``k`` and ``v``,
    each (batch, n_heads, max_len, d_head), are allocated on the first ``update`` with the
    batch size, device and dtype of the keys it receives; ``pos`` counts filled positions.
    """

    def __init__(self, max_len: int):
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.max_len = max_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new keys/values and return everything cached so far.

        k, v: (batch, n_heads, t_new, d_head)  ->  (batch, n_heads, pos + t_new, d_head) each.
        """
        if k.shape != v.shape:
            raise ValueError(f"keys and values must have the same shape: {tuple(k.shape)} vs {tuple(v.shape)}")
        b, h, t_new, d = k.shape
        if self.k is None:
            self.k = k.new_zeros(b, h, self.max_len, d)  # (B, H, max_len, D)
            self.v = v.new_zeros(b, h, self.max_len, d)
        elif self.k.shape[:2] != (b, h) or self.k.shape[-1] != d:
            raise ValueError(
                f"this cache holds (batch, heads, d_head) = {(self.k.shape[0], self.k.shape[1], self.k.shape[3])}, "
                f"got {(b, h, d)}; call reset() before starting another batch"
            )
        end = self.pos + t_new
        if end > self.max_len:
            raise ValueError(
                f"KV cache is full: {self.pos} cached + {t_new} new > max_len {self.max_len}; "
                "crop the context and reset() the cache"
            )
        self.k[:, :, self.pos : end] = k
        self.v[:, :, self.pos : end] = v
        self.pos = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        """Forget every cached position (keeps the buffers for reuse)."""
        self.pos = 0

    def nbytes(self) -> int:
        """Bytes held by the two buffers (0 before the first update)."""
        if self.k is None:
            return 0
        return 2 * self.k.numel() * self.k.element_size()

    def __len__(self) -> int:
        return self.pos

    def __repr__(self) -> str:
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(pos={self.pos}, max_len={self.max_len}, buffer={shape})"
