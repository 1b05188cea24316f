"""tantra_lib.viz: every helper returns a Figure that shows the data it was given."""

from __future__ import annotations

import matplotlib.pyplot as plt  # the Agg backend: tests/conftest.py sets MPLBACKEND
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from tantra_lib import causal_mask, scaled_dot_product_attention, sinusoidal_positional_encoding
from tantra_lib.viz import plot_attention, plot_attention_heads, plot_positional_curves, plot_positional_encoding


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _weights(device, h, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(h, t, 4, generator=g).to(device) for _ in range(3))
    return scaled_dot_product_attention(q, k, v, causal_mask(t, device=device))[1]  # (h, t, t)


def test_plot_attention(device):
    w = _weights(device, 1, 5)[0].requires_grad_()  # a tensor that needs grad and lives on `device`
    tokens = ["the", "cat", "sat", "on", "mat"]
    fig = plot_attention(w, tokens, title="one head")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), w.detach().cpu().numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert ax.get_title() == "one head"
    assert len(fig.axes) == 2  # the heatmap and its colour bar


def test_plot_attention_on_given_axes_and_key_tokens(device):
    fig, ax = plt.subplots()
    w = _weights(device, 1, 3)[0, :2]  # (t_q=2, t_k=3)
    out = plot_attention(w, ["a", "b"], key_tokens=["x", "y", "z"], ax=ax)
    assert out is fig
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]


def test_plot_attention_heads(device):
    w = _weights(device, 6, 4)
    fig = plot_attention_heads(w, ["a", "b", "c", "d"], ncols=4, title="six heads")
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 6 and len(fig.axes) == 8  # 2 rows x 4 columns, 2 left empty
    for h, ax in enumerate(shown):
        np.testing.assert_allclose(ax.images[0].get_array(), w[h].cpu().numpy())
        assert ax.get_title() == f"head {h}"


def test_attention_plots_reject_wrong_shapes():
    with pytest.raises(ValueError, match="t_q, t_k"):
        plot_attention(torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="n_heads"):
        plot_attention_heads(torch.rand(3, 3))


def test_positional_plots(device):
    pe = sinusoidal_positional_encoding(20, 8, device=device)
    fig = plot_positional_encoding(pe)
    assert isinstance(fig, Figure)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), pe.cpu().numpy())
    fig = plot_positional_curves(pe, dims=(0, 1, 5, 99))  # 99 does not exist: skipped
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    np.testing.assert_allclose(lines[2].get_ydata(), pe[:, 5].cpu().numpy())
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["dim 0 (sin)", "dim 1 (cos)", "dim 5 (cos)"]
