"""The transformer block: attention, then a feed-forward network, each wrapped in a residual
connection and a LayerNorm.

pre-LN  (GPT-2 and most models since; norm_first=True):
    x = x + attn(ln1(x));  x = x + ffn(ln2(x))
post-LN (the original Transformer and BERT; norm_first=False):
    x = ln1(x + attn(x));  x = ln2(x + ffn(x))
The residual path lets gradients reach early layers undamped; pre-LN keeps it free of
normalisation, which is why deep pre-LN stacks train without warm-up tricks
(lessons/07_residual_block measures the gradient norms).

Checked against nn.TransformerEncoderLayer (both norm placements, GELU) in
tests/test_lib_block.py.
"""

from __future__ import annotations

import torch
from torch import nn

from .feed_forward import FeedForward
from .kv_cache import KVCache
from .multi_head import MultiHeadAttention
from .norm import LayerNorm
from .shortcut_guard import reference

__all__ = ["TransformerBlock"]


@reference("TransformerBlock")
class TransformerBlock(nn.Module):
    """One transformer block. (B, T, d_model) -> (B, T, d_model).

    Submodules ln1, attn (MultiHeadAttention), ln2, ffn (FeedForward). ``eps`` is the
    LayerNorm epsilon (1e-12 for BERT checkpoints); ``bias`` applies to every Linear and
    LayerNorm.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        norm_first: bool = True,
        dropout: float = 0.0,
        eps: float = 1e-5,
        bias: bool = True,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.ln1 = LayerNorm(d_model, eps=eps, bias=bias)
        self.attn = MultiHeadAttention(d_model, n_heads, bias=bias, dropout=dropout)
        self.ln2 = LayerNorm(d_model, eps=eps, bias=bias)
        self.ffn = FeedForward(d_model, d_ff, bias=bias, dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, d_model); mask: bool broadcastable to (B, H, T, T_total), True = may
        attend; cache: this layer's KVCache (see MultiHeadAttention)."""
        if self.norm_first:
            x = x + self._drop(self.attn(self.ln1(x), mask=mask, cache=cache))
            x = x + self._drop(self.ffn(self.ln2(x)))
        else:
            x = self.ln1(x + self._drop(self.attn(x, mask=mask, cache=cache)))
            x = self.ln2(x + self._drop(self.ffn(x)))
        return x

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # Dropout is the identity in eval mode or at p = 0; skipping the module call then saves
        # a fifth of the time per generated token (measured with the KV cache, bench/gpt.py).
        return self.dropout(x) if self.training and self.dropout.p > 0 else x
