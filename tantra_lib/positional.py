"""Positional information: attention by itself is blind to order (permute the tokens and the
outputs permute the same way), so position has to be put in.

* sinusoidal encoding (Vaswani et al. 2017): a fixed (n_positions, d_model) table added to
  the embeddings; column 2i = sin(p / 10000^(2i/d)), column 2i+1 = cos(same angle).
* learned embeddings (GPT-2, BERT): one trained vector per position.
* RoPE (Su et al. 2021): rotate each pair of query/key features by an angle proportional to
  the position, so q·k depends only on the offset between the two positions.
* ALiBi (Press et al. 2022): no embedding at all; a per-head linear penalty on distance is
  added to the attention scores.

Taught in lessons/04_positional_encoding. Tested in tests/test_lib_positional.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .shortcut_guard import reference

__all__ = [
    "sinusoidal_positional_encoding",
    "LearnedPositionalEmbedding",
    "apply_rope",
    "alibi_bias",
    "alibi_slopes",
]


@reference("sinusoidal_positional_encoding")
def sinusoidal_positional_encoding(
    n_positions: int, d_model: int, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(n_positions, d_model) table: [p, 2i] = sin(p / 10000^(2i/d_model)), [p, 2i+1] = cos(same).

    Any d_model >= 1 (for odd d_model the last column is a sine).
    """
    for name, val in (("n_positions", n_positions), ("d_model", d_model)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    # Compute in float64 on the CPU (mps has no float64) so large positions keep their
    # precision; move and cast at the end.
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d/2),)
    angle = pos / (10000.0 ** (two_i / d_model))  # (P, ceil(d/2))
    pe = torch.empty(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)  # columns 0, 2, 4, ...
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # columns 1, 3, ... (one fewer when d_model is odd)
    return pe.to(device=device, dtype=dtype)


@reference("LearnedPositionalEmbedding")
class LearnedPositionalEmbedding(nn.Module):
    """One learned d_model vector per position, up to n_positions.

    forward(positions: integer tensor (..., T)) -> (..., T, d_model); an int T means
    positions 0..T-1. A position outside 0..n_positions-1 raises ValueError.
    """

    def __init__(self, n_positions: int, d_model: int):
        super().__init__()
        for name, val in (("n_positions", n_positions), ("d_model", d_model)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.n_positions = n_positions
        self.weight = nn.Parameter(torch.empty(n_positions, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions) -> torch.Tensor:
        if isinstance(positions, int) and not isinstance(positions, bool):
            positions = torch.arange(positions, device=self.weight.device)
        if not isinstance(positions, torch.Tensor) or positions.is_floating_point() or positions.dtype == torch.bool:
            got = f"a {positions.dtype} tensor" if isinstance(positions, torch.Tensor) else type(positions).__name__
            raise TypeError(f"positions must be an int or an integer tensor, got {got}")
        if positions.numel():
            lo, hi = int(positions.min()), int(positions.max())
            if hi >= self.n_positions:
                raise ValueError(
                    f"position {hi} is past the {self.n_positions} positions this embedding was built for "
                    f"(valid: 0..{self.n_positions - 1}); crop the input to the last {self.n_positions} tokens"
                )
            if lo < 0:
                raise ValueError(f"positions must be >= 0, got {lo}")
        return self.weight[positions]  # (..., T, d_model)


@reference("apply_rope")
def apply_rope(
    x: torch.Tensor, positions: torch.Tensor | None = None, base: float = 10000.0
) -> torch.Tensor:
    """Rotary position embedding of the last dim, pairs (2i, 2i+1) interleaved.

    x: (..., T, D) with D even; positions: (T,) or broadcastable to (..., T), default 0..T-1.
    Pair i at position p is rotated by the angle p * base^(-2i/D):
        out[2i]   = x[2i] cos - x[2i+1] sin
        out[2i+1] = x[2i] sin + x[2i+1] cos
    Returns a tensor shaped like x. Norms are preserved; q·k depends only on the offset.
    """
    t, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(f"RoPE rotates pairs of features: the last dim must be even, got {d}")
    if positions is None:
        positions = torch.arange(t, device=x.device)
    positions = torch.as_tensor(positions, device=x.device)
    if positions.shape[-1] != t:
        raise ValueError(f"positions must give one position per token ({t}), got shape {tuple(positions.shape)}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=work) / d)  # (D/2,)
    angle = positions.to(work)[..., None] * inv_freq  # (..., T, D/2)
    cos, sin = angle.cos(), angle.sin()
    xf = x.to(work)
    x_even, x_odd = xf[..., 0::2], xf[..., 1::2]  # (..., T, D/2) each
    out = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)  # (..., T, D/2, 2)
    return out.flatten(-2).to(x.dtype)  # (..., T, D), pairs interleaved again


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The ALiBi head slopes: 2^(-8/n), 2^(-16/n), ... for n a power of two; otherwise the
    slopes of the nearest lower power of two, then every other slope of twice that."""

    def powers(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
    low = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(low)
    if low != n_heads:
        slopes += powers(2 * low)[0::2][: n_heads - low]
    return torch.tensor(slopes)


@reference("alibi_bias")
def alibi_bias(n_heads: int, t: int, device=None) -> torch.Tensor:
    """(n_heads, t, t) additive attention bias: bias[h, i, j] = -slope_h * |i - j|.

    Added to the scores before the softmax (with a causal mask, only j <= i matters there).
    """
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be a positive int (the number of positions), got {t!r}")
    pos = torch.arange(t, device=device)
    dist = (pos[:, None] - pos[None, :]).abs().float()  # (t, t)
    return -alibi_slopes(n_heads).to(device)[:, None, None] * dist  # (H, t, t)
