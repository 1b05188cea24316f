"""Tests of the lesson 04 checks (tantra_lib/checks/positional.py): plausible wrong
implementations are rejected naming the mistake, alternative correct ones pass the hidden cases."""

from __future__ import annotations

import math

import pytest
import torch

from tantra_lib import apply_rope, sinusoidal_positional_encoding
from tantra_lib.checks import outcome
from tantra_lib.checks.positional import check_apply_rope, check_sinusoidal_positional_encoding

# ----------------------------------------------------------------------------- sinusoidal


def _angles(n_positions, d_model, two_i):
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    return pos / 10000 ** (two_i / d_model)  # (P, d/2)


def _interleave(sin, cos):
    return torch.stack((sin, cos), dim=-1).flatten(-2)


def pe_swapped(n_positions, d_model):
    a = _angles(n_positions, d_model, torch.arange(0, d_model, 2))
    return _interleave(a.cos(), a.sin())


def pe_i_not_2i(n_positions, d_model):
    a = _angles(n_positions, d_model, torch.arange(d_model // 2))
    return _interleave(a.sin(), a.cos())


def pe_halves(n_positions, d_model):
    a = _angles(n_positions, d_model, torch.arange(0, d_model, 2))
    return torch.cat((a.sin(), a.cos()), dim=-1)


def pe_count_not_vector(n_positions, d_model):
    two_i = torch.arange(0, d_model, 2)
    a = (n_positions / 10000 ** (two_i / d_model)).expand(n_positions, -1)
    return _interleave(a.sin(), a.cos())


def pe_from_one(n_positions, d_model):
    two_i = torch.arange(0, d_model, 2)
    a = torch.arange(1, n_positions + 1)[:, None] / 10000 ** (two_i / d_model)
    return _interleave(a.sin(), a.cos())


def pe_column_freq(n_positions, d_model):
    j = torch.arange(d_model)
    a = torch.arange(n_positions)[:, None] / 10000 ** (j / d_model)
    return torch.where(j % 2 == 0, a.sin(), a.cos())


def pe_float64(n_positions, d_model):
    return pe_loops(n_positions, d_model).double()


def pe_shortcut(n_positions, d_model):
    return sinusoidal_positional_encoding(n_positions, d_model)


def pe_todo(n_positions, d_model):
    raise NotImplementedError()


def pe_loops(n_positions, d_model):
    pe = torch.zeros(n_positions, d_model)
    for p in range(n_positions):
        for i in range(0, d_model, 2):
            angle = p / 10000 ** (i / d_model)
            pe[p, i] = math.sin(angle)
            if i + 1 < d_model:
                pe[p, i + 1] = math.cos(angle)
    return pe


def pe_exp_log(n_positions, d_model):
    """The frequencies as exp(-2i ln(10000) / d) (as in the Annotated Transformer); cos = sin shifted by π/2."""
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    a = torch.arange(n_positions, dtype=torch.float64)[:, None] * div
    return _interleave(a.sin(), torch.sin(a + math.pi / 2)).float()


@pytest.mark.parametrize("impl, keyword", [
    (pe_swapped, "swapped"),
    (pe_i_not_2i, "i instead of 2i"),
    (pe_halves, "first half"),
    (pe_count_not_vector, "number of positions instead of a position vector"),
    (pe_from_one, "start at 1"),
    (pe_column_freq, "own frequency"),
    (pe_float64, "expected float32"),
])
def test_sinusoidal_rejects_mistake(device, impl, keyword):
    r = outcome(check_sinusoidal_positional_encoding, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_sinusoidal_shortcut():
    assert outcome(check_sinusoidal_positional_encoding, pe_shortcut).status == "shortcut"


def test_sinusoidal_not_attempted():
    assert outcome(check_sinusoidal_positional_encoding, pe_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [pe_loops, pe_exp_log])
def test_sinusoidal_accepts_correct(device, impl):
    assert outcome(check_sinusoidal_positional_encoding, impl, hidden=True).passed


# ----------------------------------------------------------------------------- apply_rope


def _rope(x, positions, base, exponent_scale=2.0, sign=1.0, halves=False, concat=False):
    t, d = x.shape[-2], x.shape[-1]
    if positions is None:
        positions = torch.arange(t, device=x.device)
    i = torch.arange(d // 2, device=x.device, dtype=torch.float32)
    a = sign * positions.float()[..., None] * base ** (-exponent_scale * i / d)
    cos, sin = a.cos(), a.sin()
    if halves:
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = (x1 * cos - x2 * sin, x1 * sin + x2 * cos)
    return torch.cat(out, dim=-1) if concat else torch.stack(out, dim=-1).flatten(-2)


def rope_halves(x, positions=None, base=10000.0):
    return _rope(x, positions, base, halves=True)


def rope_wrong_direction(x, positions=None, base=10000.0):
    return _rope(x, positions, base, sign=-1.0)


def rope_i_not_2i(x, positions=None, base=10000.0):
    return _rope(x, positions, base, exponent_scale=1.0)


def rope_ignores_positions(x, positions=None, base=10000.0):
    return _rope(x, None, base)


def rope_ignores_base(x, positions=None, base=10000.0):
    return _rope(x, positions, 10000.0)


def rope_count_not_vector(x, positions=None, base=10000.0):
    return _rope(x, torch.full((x.shape[-2],), x.shape[-2], device=x.device), base)


def rope_not_interleaved(x, positions=None, base=10000.0):
    return _rope(x, positions, base, concat=True)


def rope_shortcut(x, positions=None, base=10000.0):
    return apply_rope(x, positions, base)


def rope_todo(x, positions=None, base=10000.0):
    raise NotImplementedError


def rope_complex(x, positions=None, base=10000.0):
    t, d = x.shape[-2], x.shape[-1]
    if positions is None:
        positions = torch.arange(t, device=x.device)
    work = torch.float64
    z = torch.view_as_complex(x.to(work).reshape(*x.shape[:-1], d // 2, 2).contiguous())
    theta = base ** (-torch.arange(0, d, 2, device=x.device, dtype=work) / d)
    rot = torch.polar(torch.ones((), dtype=work, device=x.device), positions.to(work)[..., None] * theta)
    return torch.view_as_real(z * rot).flatten(-2).to(x.dtype)


def rope_matrix(x, positions=None, base=10000.0):
    """Build the block-diagonal 2x2 rotation matrices and multiply (slow but plain)."""
    t, d = x.shape[-2], x.shape[-1]
    if positions is None:
        positions = torch.arange(t, device=x.device)
    theta = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)
    a = positions.double()[..., None] * theta  # (..., T, D/2)
    c, s = a.cos(), a.sin()
    rot = torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)  # (..., T, D/2, 2, 2)
    pairs = x.double().unflatten(-1, (d // 2, 2))[..., None]  # (..., T, D/2, 2, 1)
    return (rot @ pairs).squeeze(-1).flatten(-2).to(x.dtype)


@pytest.mark.parametrize("impl, keyword", [
    (rope_halves, "halves"),
    (rope_wrong_direction, "wrong direction"),
    (rope_i_not_2i, "i instead of 2i"),
    (rope_ignores_positions, "ignored the `positions`"),
    (rope_ignores_base, "ignored the `base`"),
    (rope_count_not_vector, "number of positions instead of a position vector"),
    (rope_not_interleaved, "not interleaved"),
])
def test_apply_rope_rejects_mistake(device, impl, keyword):
    r = outcome(check_apply_rope, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_apply_rope_shortcut():
    assert outcome(check_apply_rope, rope_shortcut).status == "shortcut"


def test_apply_rope_not_attempted():
    assert outcome(check_apply_rope, rope_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [rope_complex, rope_matrix])
def test_apply_rope_accepts_correct(device, impl):
    assert outcome(check_apply_rope, impl, hidden=True).passed
