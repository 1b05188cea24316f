"""Multi-head attention: several attention patterns side by side.

The model dimension is split into n_heads groups of d_head = d_model / n_heads features; each
head runs scaled dot-product attention on its own group, and an output projection mixes the
heads back together. One fused (d_model -> 3 d_model) projection makes q, k and v for all
heads at once; its rows are laid out [q; k; v], the layout of
``nn.MultiheadAttention.in_proj_weight``, so weights load across directly.

Taught in lessons/03_multi_head (the cache in lessons/09_kv_cache). Checked against
nn.MultiheadAttention in tests/test_lib_multi_head.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import scaled_dot_product_attention
from .kv_cache import KVCache
from .shortcut_guard import reference

__all__ = ["split_heads", "merge_heads", "MultiHeadAttention"]


@reference("split_heads")
def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., T, n_heads * d_head) -> (..., n_heads, T, d_head)."""
    *lead, t, d_model = x.shape
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    x = x.reshape(*lead, t, n_heads, d_model // n_heads)  # (..., T, H, D)
    return x.transpose(-3, -2)  # (..., H, T, D)


@reference("merge_heads")
def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., n_heads, T, d_head) -> (..., T, n_heads * d_head); the inverse of split_heads."""
    *lead, h, t, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, t, h * d)  # (..., T, H, D) -> (..., T, H*D)


@reference("MultiHeadAttention")
class MultiHeadAttention(nn.Module):
    """Multi-head self-attention.

    qkv_proj: Linear(d_model, 3 d_model), rows [q; k; v]; out_proj: Linear(d_model, d_model).
    forward(x (B, T, d_model), mask=None, cache=None, return_weights=False) -> (B, T, d_model)
    (and the weights (B, n_heads, T, T_total) when ``return_weights``).
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ):
        """x: (B, T, d_model); mask: bool broadcastable to (B, n_heads, T, T_total), True =
        may attend; cache: this layer's KVCache — the new keys/values are appended and the
        queries attend over every cached position (T_total = cached + T)."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"expected last dim d_model={self.d_model}, got shape {tuple(x.shape)}")
        # 1) project once, then cut into q, k, v (rows laid out q, k, v)
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)  # 3 x (B, T, C)
        # 2) give every head its own slice of the features
        q, k, v = (split_heads(t, self.n_heads) for t in (q, k, v))  # (B, H, T, D)
        # 3) with a cache, attend over the past keys/values too
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H, T_total, D)
        # 4) attention per head, all heads in one batched matmul. When the weights are not
        #    asked for, PyTorch's fused kernel computes the same softmax(q k^T / sqrt(d)) v
        #    (fully masked rows -> 0 too) without materialising them, several times faster;
        #    return_weights=True runs the reference math below. Tests keep the two equal.
        if not return_weights and (mask is None or mask.dtype == torch.bool):
            p = self.attn_dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, T, D)
            weights = None
        else:
            out, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, D), (B, H, T, T_total)
            if self.attn_dropout.p > 0 and self.training:
                weights = self.attn_dropout(weights)
                out = weights @ v
        # 5) heads side by side again, then mix them
        out = self.out_proj(merge_heads(out))  # (B, T, C)
        return (out, weights) if return_weights else out
