"""tantra_lib.norm against nn.LayerNorm, F.layer_norm, F.rms_norm and nn.RMSNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tantra_lib import LayerNorm, RMSNorm, layer_norm, rms_norm

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
SHAPES = [(7,), (4, 9), (2, 3, 16), (2, 1, 3, 5), (3, 1)]


def randn(*shape, device, dtype=torch.float32, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (shift + scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [1e-5, 1e-12, 0.1])
def test_layer_norm_matches_nn_layer_norm(device, dtype, shape, eps):
    d = shape[-1]
    ref = nn.LayerNorm(d, eps=eps).to(device=device, dtype=dtype)
    with torch.no_grad():  # non-trivial affine parameters
        ref.weight.copy_(randn(d, device=device, dtype=dtype, seed=1))
        ref.bias.copy_(randn(d, device=device, dtype=dtype, seed=2))
    x = randn(*shape, device=device, dtype=dtype, seed=3, scale=3.0, shift=1.5)
    before = x.clone()
    torch.testing.assert_close(layer_norm(x, ref.weight, ref.bias, eps), ref(x), **TOL[dtype])
    torch.testing.assert_close(layer_norm(x, None, None, eps), F.layer_norm(x, (d,), eps=eps), **TOL[dtype])
    ours = LayerNorm(d, eps=eps).to(device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())  # same parameter names as nn.LayerNorm
    torch.testing.assert_close(ours(x), ref(x), **TOL[dtype])
    torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_layer_norm_default_eps_and_biased_variance(device):
    x = randn(4, 6, device=device, seed=4)
    torch.testing.assert_close(layer_norm(x, None, None), F.layer_norm(x, (6,), eps=1e-5), **TOL[torch.float32])
    # biased variance: a row (-1, 1) normalises to (-1, 1) (unbiased would give +-0.707)
    y = layer_norm(torch.tensor([[-1.0, 1.0]], device=device), None, None, eps=0.0)
    torch.testing.assert_close(y, torch.tensor([[-1.0, 1.0]], device=device))


def test_layer_norm_large_offset_and_constant_rows(device):
    # mean 1e4, std 1: float32 keeps ~3 decimals of each deviation; compare with the exact
    # (float64) normalisation of the same float32 numbers at that precision.
    x = randn(3, 32, device=device, seed=5, shift=1e4)
    exact = F.layer_norm(x.double(), (32,)).float()
    torch.testing.assert_close(layer_norm(x, None, None), exact, rtol=0, atol=2e-3)
    const = torch.full((2, 8), 7.0, device=device)
    out = layer_norm(const, None, None)
    assert torch.isfinite(out).all() and (out == 0).all()  # eps inside the sqrt: 0 / sqrt(eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_rms_norm_matches_torch(device, dtype, shape, eps):
    d = shape[-1]
    w = randn(d, device=device, dtype=dtype, seed=6)
    x = randn(*shape, device=device, dtype=dtype, seed=7, scale=2.0, shift=0.5)
    torch.testing.assert_close(rms_norm(x, w, eps), F.rms_norm(x, (d,), w, eps), **TOL[dtype])
    torch.testing.assert_close(rms_norm(x, None, eps), F.rms_norm(x, (d,), None, eps), **TOL[dtype])
    ref = nn.RMSNorm(d, eps=eps).to(device=device, dtype=dtype)
    with torch.no_grad():
        ref.weight.copy_(w)
    ours = RMSNorm(d, eps=eps).to(device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x), ref(x), **TOL[dtype])


def test_rms_norm_default_eps(device):
    x = randn(3, 4, device=device, seed=8) * 1e-3  # small values: eps matters
    torch.testing.assert_close(rms_norm(x, None), F.rms_norm(x, (4,), eps=1e-6), **TOL[torch.float32])


def test_modules():
    ln = LayerNorm(6)
    assert torch.equal(ln.weight, torch.ones(6)) and torch.equal(ln.bias, torch.zeros(6)) and ln.eps == 1e-5
    assert {n for n, _ in ln.named_parameters()} == {"weight", "bias"}
    no_bias = LayerNorm(6, eps=1e-12, bias=False)
    assert no_bias.bias is None and no_bias.eps == 1e-12
    no_bias.load_state_dict(nn.LayerNorm(6, bias=False).state_dict())
    rms = RMSNorm(6)
    assert torch.equal(rms.weight, torch.ones(6)) and rms.eps == 1e-6
    assert {n for n, _ in rms.named_parameters()} == {"weight"}


def test_non_contiguous(device):
    x = randn(8, 3, 6, device=device, seed=9).transpose(0, 1)[:, ::2]  # (3, 4, 6) strided
    assert not x.is_contiguous()
    w, b = randn(6, device=device, seed=10), randn(6, device=device, seed=11)
    torch.testing.assert_close(layer_norm(x, w, b), F.layer_norm(x.contiguous(), (6,), w, b), **TOL[torch.float32])
    torch.testing.assert_close(rms_norm(x, w), F.rms_norm(x.contiguous(), (6,), w, 1e-6), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(device, dtype):
    x = randn(4, 5, 32, device=device, seed=12, scale=2.0)
    w, b = randn(32, device=device, seed=13), randn(32, device=device, seed=14)
    out = layer_norm(x.to(dtype), w.to(dtype), b.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), F.layer_norm(x, (32,), w, b), rtol=2e-2, atol=5e-2)
    out = rms_norm(x.to(dtype), w.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), F.rms_norm(x, (32,), w, 1e-6), rtol=2e-2, atol=5e-2)


def test_gradcheck(device):
    x = randn(2, 3, 5, device=device, dtype=torch.float64, seed=15).requires_grad_()
    w = randn(5, device=device, dtype=torch.float64, seed=16).requires_grad_()
    b = randn(5, device=device, dtype=torch.float64, seed=17).requires_grad_()
    assert torch.autograd.gradcheck(layer_norm, (x, w, b))
    assert torch.autograd.gradcheck(lambda t: layer_norm(t, None, None), (x,))
    assert torch.autograd.gradcheck(rms_norm, (x, w))
    m = LayerNorm(5).to(device=device, dtype=torch.float64)
    assert torch.autograd.gradcheck(m, (x,))
    r = RMSNorm(5).to(device=device, dtype=torch.float64)
    assert torch.autograd.gradcheck(r, (x,))
