"""Scaled dot-product attention: every query takes a softmax-weighted average of the values,
weighted by how well it matches each key.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

The 1/sqrt(d_k) keeps the variance of a dot product of d_k unit-variance features at 1, so
the softmax does not saturate as d_k grows (lessons/02_attention measures it).

Taught in lessons/02_attention. Checked against F.scaled_dot_product_attention in
tests/test_lib_attention.py.
"""

from __future__ import annotations

import math

import torch

from .shortcut_guard import reference
from .softmax import masked_softmax, softmax

__all__ = ["attention_scores", "causal_mask", "scaled_dot_product_attention"]


@reference("attention_scores")
def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled similarity of every query with every key.

    q: (..., t_q, d_k), k: (..., t_k, d_k)  ->  (..., t_q, t_k) = q k^T / sqrt(d_k)
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"queries and keys need the same feature size d_k: q has {q.shape[-1]}, "
            f"k has {k.shape[-1]}"
        )
    # Scaling q (t_q x d_k) before the product is the same maths as scaling the scores
    # (t_q x t_k) after it, and much cheaper when t_k > d_k.
    return (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (..., t_q, t_k)


@reference("causal_mask")
def causal_mask(t: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool (t, t) mask, True on and below the diagonal: position i may attend to j <= i."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be a positive int (the number of positions), got {t!r}")
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


@reference("scaled_dot_product_attention")
def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_k)) v, returning the output and the attention weights.

    q: (..., t_q, d_k), k: (..., t_k, d_k), v: (..., t_k, d_v)
    mask: bool, broadcastable to (..., t_q, t_k), True = may attend (None: attend everywhere)
    ->  out (..., t_q, d_v), weights (..., t_q, t_k). A query that may attend nowhere gets
    all-zero weights and a zero output.
    """
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v need the same number of positions: {k.shape[-2]} vs {v.shape[-2]}")
    scores = attention_scores(q, k)  # (..., t_q, t_k)
    weights = softmax(scores, dim=-1) if mask is None else masked_softmax(scores, mask, dim=-1)
    return weights @ v, weights  # (..., t_q, d_v), (..., t_q, t_k)
