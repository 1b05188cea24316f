"""tantra_lib.positional: the sinusoidal table column by column against the formula, RoPE
against an independent complex-number implementation, ALiBi slopes against the published
values, learned embeddings' bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tantra_lib import (
    LearnedPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    sinusoidal_positional_encoding,
)

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def randn(*shape, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


# ---- sinusoidal ------------------------------------------------------------------------------


@pytest.mark.parametrize("d_model", [1, 2, 3, 7, 16])
def test_sinusoidal_formula_column_by_column(device, d_model):
    n = 50
    pe = sinusoidal_positional_encoding(n, d_model, device=device, dtype=torch.float64)
    assert pe.shape == (n, d_model) and pe.dtype == torch.float64 and pe.device.type == device.type
    for col in range(d_model):
        i = col // 2  # columns 2i and 2i+1 share the angle p / 10000^(2i / d_model)
        fn = math.sin if col % 2 == 0 else math.cos
        expected = torch.tensor([fn(p / 10000 ** (2 * i / d_model)) for p in range(n)], dtype=torch.float64)
        torch.testing.assert_close(pe[:, col].cpu(), expected, rtol=1e-12, atol=1e-12, msg=f"column {col}")


def test_sinusoidal_defaults_and_dtypes(device):
    pe = sinusoidal_positional_encoding(10, 6)
    assert pe.dtype == torch.float32 and pe.device.type == "cpu" and not pe.requires_grad
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 3))  # position 0: sin 0, cos 0
    half = sinusoidal_positional_encoding(10, 6, device=device, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float().cpu(), pe, rtol=1e-2, atol=1e-2)
    # large positions keep their precision (computed in float64, then cast)
    far = sinusoidal_positional_encoding(100_001, 4)[-1]
    exact = torch.tensor([math.sin(1e5), math.cos(1e5), math.sin(1e5 / 100), math.cos(1e5 / 100)])
    torch.testing.assert_close(far, exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("args", [(0, 4), (4, 0), (-1, 4), (4, 2.0), (True, 4)])
def test_sinusoidal_bad_sizes(args):
    with pytest.raises(ValueError, match="positive int"):
        sinusoidal_positional_encoding(*args)


# The sinusoidal table takes no tensor input, so there is nothing to gradcheck; ALiBi's bias
# likewise. Their values are checked exactly above and below.


# ---- learned --------------------------------------------------------------------------------


def test_learned_positional_embedding(device):
    emb = LearnedPositionalEmbedding(8, 5).to(device)
    assert isinstance(emb.weight, nn.Parameter) and emb.weight.shape == (8, 5)
    out = emb(6)
    assert out.shape == (6, 5)
    torch.testing.assert_close(out, emb.weight[:6], rtol=0, atol=0)
    pos = torch.tensor([[7, 0, 3], [1, 1, 2]], device=device)
    out = emb(pos)
    assert out.shape == (2, 3, 5)
    torch.testing.assert_close(out[0, 0], emb.weight[7], rtol=0, atol=0)
    out.sum().backward()
    assert emb.weight.grad[1].eq(2).all() and emb.weight.grad[4].eq(0).all()  # position 1 used twice, 4 never


def test_learned_positional_embedding_errors(device):
    emb = LearnedPositionalEmbedding(4, 3).to(device)
    with pytest.raises(ValueError, match="past the 4 positions"):
        emb(5)
    with pytest.raises(ValueError, match="past the 4 positions"):
        emb(torch.tensor([0, 4], device=device))
    with pytest.raises(ValueError, match=">= 0"):
        emb(torch.tensor([-1, 0], device=device))
    with pytest.raises(TypeError, match="integer"):
        emb(torch.tensor([0.0, 1.0], device=device))
    with pytest.raises(ValueError, match="positive int"):
        LearnedPositionalEmbedding(0, 3)


# ---- RoPE -----------------------------------------------------------------------------------


def rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Independent RoPE: pair (2i, 2i+1) is the complex number x_2i + j x_2i+1, multiplied by
    e^{j p theta_i} with theta_i = base^(-2i/D)."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], d // 2, 2).contiguous())
    theta = torch.tensor([base ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64, device=x.device)
    rot = torch.polar(torch.ones_like(theta), positions.to(torch.float64)[..., None] * theta)  # e^{j p theta}
    return torch.view_as_real(z * rot).reshape(x.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 7, 4), (1, 1, 2)])
def test_rope_matches_complex_rotation(device, dtype, shape):
    x = randn(*shape, device=device, dtype=dtype, seed=1)
    t = shape[-2]
    out = apply_rope(x)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, rope_complex(x, torch.arange(t, device=device)).to(dtype), **TOL[dtype])
    # explicit positions (e.g. continuing after cached tokens) and another base
    pos = torch.arange(10, 10 + t, device=device)
    torch.testing.assert_close(
        apply_rope(x, pos, base=500.0), rope_complex(x, pos, base=500.0).to(dtype), **TOL[dtype]
    )


def test_rope_preserves_norms_and_position_zero(device):
    x = randn(2, 9, 16, device=device, dtype=torch.float64, seed=2)
    out = apply_rope(x)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), **TOL[torch.float64])
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)  # position 0: no rotation


def test_rope_dot_product_depends_only_on_offset(device):
    q, k = randn(16, device=device, dtype=torch.float64, seed=3), randn(16, device=device, dtype=torch.float64, seed=4)

    def score(m, n):
        rq = apply_rope(q[None], torch.tensor([m], device=device))
        rk = apply_rope(k[None], torch.tensor([n], device=device))
        return float((rq * rk).sum())

    for m, n in [(3, 1), (0, 5), (7, 7)]:
        for shift in (1, 10, 123):
            assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-10, abs=1e-10)
    assert score(3, 1) != pytest.approx(score(4, 1), rel=1e-3)  # but it does depend on the offset


def test_rope_on_heads_and_batched_positions(device):
    x = randn(2, 3, 5, 8, device=device, seed=5)  # (B, H, T, D)
    pos = torch.tensor([[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]], device=device)[:, None, :]  # (B, 1, T)
    out = apply_rope(x, pos)
    for b in range(2):
        torch.testing.assert_close(out[b], apply_rope(x[b], pos[b, 0]), **TOL[torch.float32])


def test_rope_non_contiguous_and_low_precision(device):
    x = randn(6, 4, 8, device=device, seed=6).transpose(0, 1)  # (4, 6, 8) strided
    assert not x.is_contiguous()
    ref = rope_complex(x, torch.arange(6, device=device))
    torch.testing.assert_close(apply_rope(x), ref.float(), **TOL[torch.float32])
    for dtype in (torch.float16, torch.bfloat16):
        out = apply_rope(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_rope_errors(device):
    with pytest.raises(ValueError, match="even"):
        apply_rope(torch.zeros(3, 5, device=device))
    with pytest.raises(ValueError, match="one position per token"):
        apply_rope(torch.zeros(3, 4, device=device), torch.arange(4, device=device))


def test_rope_gradcheck(device):
    x = randn(2, 3, 4, device=device, dtype=torch.float64, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(apply_rope, (x,))
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, torch.tensor([5, 2, 9], device=device)), (x,))


# ---- ALiBi ----------------------------------------------------------------------------------


def test_alibi_slopes_known_values():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-k for k in range(1, 9)]), rtol=0, atol=0)
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]), rtol=0, atol=0)
    torch.testing.assert_close(alibi_slopes(1), torch.tensor([2.0**-8]), rtol=0, atol=0)
    # 12 heads (not a power of two): the 8-head slopes, then the odd-indexed 16-head ones
    # 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 (the reference implementation of Press et al.).
    twelve = [2.0**-k for k in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(twelve), rtol=1e-7, atol=0)
    six = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(six), rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="positive int"):
        alibi_slopes(0)


def test_alibi_bias(device):
    bias = alibi_bias(4, 5, device=device)
    assert bias.shape == (4, 5, 5) and bias.device.type == device.type and bias.is_floating_point()
    slopes = alibi_slopes(4)
    for h in range(4):
        for i in range(5):
            for j in range(5):
                assert float(bias[h, i, j]) == pytest.approx(-float(slopes[h]) * abs(i - j), abs=1e-7)
    with pytest.raises(ValueError, match="positive int"):
        alibi_bias(4, 0)
