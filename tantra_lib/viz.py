"""Plots the lessons share: attention heatmaps (one head or many) and pictures of
positional encodings. Each returns the matplotlib Figure so a notebook shows it once.
Tensors may live on any device and need not be detached. Tested in tests/test_lib_viz.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "plot_attention",
    "plot_attention_heads",
    "plot_positional_encoding",
    "plot_positional_curves",
]


def _np(x):
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _heatmap(ax, w, tokens_q, tokens_k, title):
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-9), aspect="auto")
    if tokens_k is not None:
        ax.set_xticks(range(len(tokens_k)), tokens_k, rotation=90, fontsize=8)
    if tokens_q is not None:
        ax.set_yticks(range(len(tokens_q)), tokens_q, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title)
    return im


def plot_attention(
    weights: torch.Tensor,
    tokens: Sequence[str] | None = None,
    key_tokens: Sequence[str] | None = None,
    title: str | None = None,
    ax=None,
):
    """Heatmap of one attention pattern. weights: (t_q, t_k), rows sum to 1."""
    import matplotlib.pyplot as plt

    w = _np(weights)
    if w.ndim != 2:
        raise ValueError(f"plot_attention takes one (t_q, t_k) pattern, got shape {w.shape}")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4 + 0.15 * w.shape[1], 3.5 + 0.15 * w.shape[0]))
    im = _heatmap(ax, w, tokens, key_tokens if key_tokens is not None else tokens, title)
    (fig or ax.figure).colorbar(im, ax=ax, fraction=0.046)
    return fig or ax.figure


def plot_attention_heads(
    weights: torch.Tensor,
    tokens: Sequence[str] | None = None,
    ncols: int = 4,
    title: str | None = None,
):
    """A grid of heatmaps, one per head. weights: (n_heads, t_q, t_k)."""
    import matplotlib.pyplot as plt

    w = _np(weights)
    if w.ndim != 3:
        raise ValueError(f"plot_attention_heads takes (n_heads, t_q, t_k), got shape {w.shape}")
    h = w.shape[0]
    ncols = min(ncols, h)
    nrows = math.ceil(h / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < h:
            _heatmap(ax, w[i], tokens, tokens, f"head {i}")
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_positional_encoding(pe: torch.Tensor, title: str = "positional encoding"):
    """Image of an (n_positions, d_model) encoding: positions down, features across."""
    import matplotlib.pyplot as plt

    p = _np(pe)
    fig, ax = plt.subplots(figsize=(7, 4))
    im = ax.imshow(p, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xlabel("feature (dimension)")
    ax.set_ylabel("position")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return fig


def plot_positional_curves(pe: torch.Tensor, dims: Sequence[int] = (0, 1, 4, 5, 16, 17)):
    """Each chosen feature of an (n_positions, d_model) encoding as a curve over positions."""
    import matplotlib.pyplot as plt

    p = _np(pe)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for d in dims:
        if d < p.shape[1]:
            ax.plot(p[:, d], label=f"dim {d} ({'sin' if d % 2 == 0 else 'cos'})")
    ax.set_xlabel("position")
    ax.set_ylabel("value")
    ax.legend(fontsize=8, ncol=2)
    return fig
