"""Checks of lesson 04_positional_encoding: ``sinusoidal_positional_encoding`` and ``apply_rope``.

The expected sinusoidal table is built column by column from the formula of Vaswani et al.
(2017) in float64; the expected RoPE output comes from complex multiplication (feature pairs
(2i, 2i+1) as complex numbers, multiplied by e^{i·p·θ_i}), a different route from the usual
cos/sin code. Before reporting "wrong values" each check tries the typical mistakes (sin and
cos swapped, i instead of 2i in the exponent, the number of positions instead of a position
vector, halves instead of interleaved pairs, the wrong rotation direction, ...) and names the
one that matches. Tested in tests/test_checks_positional.py.
"""

from __future__ import annotations

import torch

from ..device import get_device
from ._core import call, compare, exercise, expect
from .softmax import _randn

__all__ = ["check_sinusoidal_positional_encoding", "check_apply_rope"]


# ----------------------------------------------------------------------------- sinusoidal

_PE_HINT = ("pe[p, 2i] = sin(p / 10000^(2i/d_model)) and pe[p, 2i+1] = cos(p / 10000^(2i/d_model)), "
            "for p = 0 .. n_positions-1 (a column vector) and i = 0 .. d_model/2-1 (a row vector).")


def _pe_table(positions, d, exponent="pair", order="sin_cos", layout="interleaved", divide=True):
    """A (possibly wrong) sinusoidal table in float64. positions: (P,) float64."""
    j = torch.arange(d, dtype=torch.float64)
    expo = {"pair": j - j % 2, "half": (j - j % 2) / 2, "column": j}[exponent] / d  # 2i/d, i/d or j/d
    freq = 10000.0 ** (-expo) if divide else 10000.0 ** expo
    angle = positions[:, None] * freq  # (P, d)
    if layout == "halves":  # sin of the d/2 pair angles, then their cos
        a = angle[:, 0::2]
        return torch.cat((a.sin(), a.cos()), dim=-1)
    even = (j % 2 == 0)
    first, second = (angle.sin(), angle.cos()) if order == "sin_cos" else (angle.cos(), angle.sin())
    return torch.where(even, first, second)


def _pe_mistakes(n, d):
    pos = torch.arange(n, dtype=torch.float64)
    return [
        (_pe_table(pos, d, order="cos_sin"), "sin and cos are swapped: even columns should be sines, odd ones cosines.",
         _PE_HINT),
        (_pe_table(pos, d, exponent="half"), "used i instead of 2i in the exponent: the frequencies fall off half as "
         "fast as they should.", "The exponent is 2i/d_model, with i the index of the (sin, cos) pair."),
        (_pe_table(pos, d, exponent="column"), "each column got its own frequency (exponent j/d_model with j the "
         "column); a sin column and the cos column next to it share one frequency, 10000^(-2i/d_model).", _PE_HINT),
        (_pe_table(pos, d, layout="halves"), "sines fill the first half of the columns and cosines the second half; "
         "they should alternate (sin in column 2i, cos in column 2i+1).", _PE_HINT),
        (_pe_table(torch.full((n,), float(n), dtype=torch.float64), d),
         "every row is the same: used the number of positions instead of a position vector.",
         "Use positions = torch.arange(n_positions) as a column (n_positions, 1), so each row gets its own p."),
        (_pe_table(torch.arange(1, n + 1, dtype=torch.float64), d), "positions start at 1; the first position is 0.",
         "torch.arange(n_positions) starts at 0."),
        (_pe_table(pos, d, divide=False), "multiplied the positions by 10000^(2i/d_model) instead of dividing by it.",
         _PE_HINT),
        (_pe_table(pos, d).t(), "the table is transposed: expected (n_positions, d_model).", _PE_HINT),
    ]


@exercise("sinusoidal_positional_encoding", lesson="04_positional_encoding",
          forbids=("tantra_lib.sinusoidal_positional_encoding",))
def check_sinusoidal_positional_encoding(sinusoidal_positional_encoding, hidden=False):
    fn = sinusoidal_positional_encoding
    expect(callable(fn), "`sinusoidal_positional_encoding` is not a function.",
           "Define `def sinusoidal_positional_encoding(n_positions, d_model):`.")
    cases = [(10, 16), (50, 64), (3, 2)]
    if hidden:
        cases += [(1, 8), (7, 6), (256, 128), (1000, 32)]
    for n, d in cases:
        out = call(fn, n, d, name="sinusoidal_positional_encoding")
        expected = _pe_table(torch.arange(n, dtype=torch.float64), d)
        if isinstance(out, torch.Tensor):
            expected = expected.to(out.device)  # the table may live on any device
            expect(not out.is_floating_point() or out.dtype == torch.float32 or out.shape != expected.shape,
                   f"sinusoidal_positional_encoding({n}, {d}) has dtype {out.dtype}; expected float32.",
                   "Compute in float64 if you like, but return table.float() (float32, PyTorch's default).")
        compare(out, expected.float(), what=f"sinusoidal_positional_encoding({n}, {d})", hint=_PE_HINT,
                mistakes=_pe_mistakes(n, d), atol=2e-4 if n > 100 else 1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- apply_rope

_ROPE_HINT = ("θ_i = base^(-2i/D); for pair (x[2i], x[2i+1]) at position p with angle a = p·θ_i: "
              "out[2i] = x[2i] cos a - x[2i+1] sin a, out[2i+1] = x[2i] sin a + x[2i+1] cos a.")


def _rope_complex(x, positions, base):
    """Reference: pairs (2i, 2i+1) as complex numbers times e^{i·p·θ_i}, in float64."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())  # (..., T, D/2)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)  # (D/2,)
    angle = positions.double()[..., None] * theta  # (..., T, D/2)
    rot = z * torch.polar(torch.ones_like(angle), angle)
    return torch.view_as_real(rot).flatten(-2)  # (..., T, D)


def _rope_variant(x, positions, base, pairs="interleaved", sign=1.0, exponent="pair", swap=False, concat=False):
    d = x.shape[-1]
    i = torch.arange(d // 2, dtype=torch.float64, device=x.device)
    theta = base ** (-(2 * i if exponent == "pair" else i) / d)
    a = sign * positions.double()[..., None] * theta
    cos, sin = (a.sin(), a.cos()) if swap else (a.cos(), a.sin())
    xd = x.double()
    if pairs == "halves":
        x1, x2 = xd[..., : d // 2], xd[..., d // 2:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    x1, x2 = xd[..., 0::2], xd[..., 1::2]
    out = (x1 * cos - x2 * sin, x1 * sin + x2 * cos)
    return torch.cat(out, dim=-1) if concat else torch.stack(out, dim=-1).flatten(-2)


def _rope_mistakes(x, positions, base, given_positions, given_base):
    t = x.shape[-2]
    out = [
        (_rope_variant(x, positions, base, pairs="halves"), "rotated the two halves together (x[..., :D/2] with "
         "x[..., D/2:]) instead of the interleaved pairs (x[2i], x[2i+1]).",
         "Pair neighbours: x[..., 0::2] with x[..., 1::2], and interleave the results back."),
        (_rope_variant(x, positions, base, sign=-1.0), "rotated in the wrong direction (the angle has the wrong sign).",
         "out[2i] = x[2i] cos a - x[2i+1] sin a; out[2i+1] = x[2i] sin a + x[2i+1] cos a."),
        (_rope_variant(x, positions, base, exponent="half"), "used i instead of 2i in the exponent of θ_i.",
         "θ_i = base^(-2i/D) for pair i = 0 .. D/2-1 (i.e. torch.arange(0, D, 2) / D)."),
        (_rope_variant(x, positions, base, swap=True), "sin and cos are swapped.", _ROPE_HINT),
        (_rope_variant(x, positions, base, concat=True), "the rotated pairs are not interleaved back: all first "
         "members came out first, then all second members.",
         "Stack the two results on a new last axis and flatten it: torch.stack((a, b), -1).flatten(-2)."),
        (_rope_variant(x, torch.full_like(positions, t), base),
         "every token was rotated by the same angle: used the number of positions instead of a position vector.",
         "Use positions = torch.arange(T) (or the given positions): one angle per token."),
        (x.double(), "returned x unchanged (no rotation).", _ROPE_HINT),
    ]
    if given_positions:
        out.append((_rope_complex(x, torch.arange(t, device=x.device), base),
                    "ignored the `positions` argument (used 0 .. T-1).",
                    "Only default to torch.arange(T) when positions is None."))
    if given_base:
        out.append((_rope_complex(x, positions, 10000.0), "ignored the `base` argument (used 10000).",
                    "θ_i = base^(-2i/D) with the base that was passed."))
    return out


@exercise("apply_rope", lesson="04_positional_encoding", forbids=("tantra_lib.apply_rope",))
def check_apply_rope(apply_rope, hidden=False):
    expect(callable(apply_rope), "`apply_rope` is not a function.",
           "Define `def apply_rope(x, positions=None, base=10000.0):`.")
    dev = get_device()
    ar = lambda *a: torch.arange(*a, device=dev)  # noqa: E731
    cases = [
        (_randn(2, 6, 8, seed=151), None, None, "x (2, 6, 8)"),
        (_randn(3, 5, 16, seed=152), ar(7, 12), None, "x (3, 5, 16) with positions 7..11"),
        (_randn(2, 4, 8, seed=153), None, 100.0, "x (2, 4, 8) with base=100"),
        (_randn(2, 3, 5, 8, seed=154), None, None, "a 4-d x (2, 3, 5, 8)"),
    ]
    if hidden:
        cases += [
            (_randn(2, 5, 32, seed=155, dtype=torch.float64), ar(3, 8), None, "float64 x"),
            (_randn(2, 5, 16, seed=156, dtype=torch.bfloat16), None, None, "bfloat16 x"),
            (_randn(4, 1, 8, seed=157), ar(41, 42), None, "t = 1 at position 41"),
            (_randn(2, 8, 6, seed=158).transpose(-2, -1), None, None, "a non-contiguous x"),
            (_randn(2, 5, 8, seed=159), torch.stack((ar(5), ar(10, 15))), None, "per-sequence positions (2, 5)"),
            (_randn(1, 3, 2, seed=160), None, 10.0, "d = 2 with base=10"),
            (_randn(1, 4, 64, seed=161), ar(4093, 4097), None, "positions around 4096"),
        ]
    for x, positions, base, label in cases:
        kwargs = {} if base is None else {"base": base}
        args = (x,) if positions is None else (x, positions)
        out = call(apply_rope, *args, name="apply_rope", **kwargs)
        pos = positions if positions is not None else ar(x.shape[-2])
        b = 10000.0 if base is None else base
        expected = _rope_complex(x, pos, b).to(x.dtype)
        if x.dtype == torch.bfloat16:
            tol = 5e-2
        else:
            tol = 1e-3 if int(pos.max()) > 1000 else 1e-5
        mistakes = () if x.dtype == torch.bfloat16 else _rope_mistakes(x, pos, b, positions is not None,
                                                                       base is not None)
        compare(out, expected, what=f"apply_rope({label})", hint=_ROPE_HINT, mistakes=mistakes, atol=tol, rtol=tol)
    x = _randn(2, 4, 8, seed=162).requires_grad_()
    expect(apply_rope(x).requires_grad, "apply_rope's output does not carry gradients.",
           "Stay in torch operations (no .detach(), .numpy() or torch.tensor(...)).")
