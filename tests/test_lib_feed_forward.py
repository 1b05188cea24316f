"""tantra_lib.feed_forward against F.gelu (approximate 'none' and 'tanh') and an nn.Sequential
MLP with the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tantra_lib import FeedForward, SwiGLU, gelu, gelu_tanh

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def randn(*shape, device, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(9,), (3, 17), (2, 3, 4, 5)])
def test_gelu_matches_torch(device, dtype, shape):
    x = randn(*shape, device=device, dtype=dtype, scale=3.0)
    torch.testing.assert_close(gelu(x), F.gelu(x, approximate="none"), **TOL[dtype])
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), **TOL[dtype])


def test_gelu_extreme_values_and_approximations_differ(device):
    x = torch.tensor([-1e4, -30.0, -3.0, 0.0, 0.5, 3.0, 30.0, 1e4], device=device)
    for ours, approx in ((gelu, "none"), (gelu_tanh, "tanh")):
        y = ours(x)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, F.gelu(x, approximate=approx), **TOL[torch.float32])
    # the two are different functions: distinguishable at moderate x
    x = torch.linspace(-4, 4, 81, dtype=torch.float64, device=device)
    assert (gelu(x) - gelu_tanh(x)).abs().max() > 1e-5


def test_gelu_non_contiguous(device):
    x = randn(6, 5, device=device, scale=2.0).t()[:, ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(gelu(x), F.gelu(x), **TOL[torch.float32])
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(device, dtype):
    x = randn(4, 33, device=device, scale=3.0)
    for ours, approx in ((gelu, "none"), (gelu_tanh, "tanh")):
        y = ours(x.to(dtype))
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), F.gelu(x, approximate=approx), rtol=2e-2, atol=2e-2)
    ff = FeedForward(8, 16).to(device)
    out = ff.to(dtype)(x[:, :8].to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


def _mlp_twin(ff: FeedForward, d_model, d_ff, bias, approximate="none"):
    ref = nn.Sequential(
        nn.Linear(d_model, d_ff, bias=bias), nn.GELU(approximate=approximate), nn.Linear(d_ff, d_model, bias=bias)
    )
    ref = ref.to(device=ff.fc_in.weight.device, dtype=ff.fc_in.weight.dtype)
    ref[0].load_state_dict(ff.fc_in.state_dict())
    ref[2].load_state_dict(ff.fc_out.state_dict())
    return ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_feed_forward_matches_torch_mlp(device, dtype, bias):
    torch.manual_seed(0)
    ff = FeedForward(8, 32, bias=bias).to(device=device, dtype=dtype)
    assert ff.fc_in.weight.shape == (32, 8) and ff.fc_out.weight.shape == (8, 32)
    assert (ff.fc_in.bias is None) == (not bias)
    ref = _mlp_twin(ff, 8, 32, bias)
    for shape in [(8,), (5, 8), (2, 3, 8)]:
        x = randn(*shape, device=device, dtype=dtype, seed=len(shape))
        torch.testing.assert_close(ff(x), ref(x), **TOL[dtype])


def test_feed_forward_uses_exact_gelu(device):
    torch.manual_seed(1)
    ff = FeedForward(4, 16).to(device=device, dtype=torch.float64)
    x = randn(64, 4, device=device, dtype=torch.float64, scale=3.0)
    tanh_twin = _mlp_twin(ff, 4, 16, True, approximate="tanh")
    assert not torch.allclose(ff(x), tanh_twin(x), rtol=1e-10, atol=1e-10)


def _swiglu_by_hand(m: SwiGLU, x):
    """w_down(silu(w_gate x) * w_up x), with silu(a) = a * sigmoid(a) written out."""
    a = x @ m.w_gate.weight.T
    gate = a * torch.sigmoid(a)
    return (gate * (x @ m.w_up.weight.T)) @ m.w_down.weight.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_swiglu(device, dtype):
    torch.manual_seed(2)
    m = SwiGLU(6, 10).to(device=device, dtype=dtype)
    assert m.w_gate.weight.shape == (10, 6) and m.w_up.weight.shape == (10, 6) and m.w_down.weight.shape == (6, 10)
    assert m.w_gate.bias is None  # no biases by default (LLaMA style)
    x = randn(2, 5, 6, device=device, dtype=dtype, seed=3)
    out = m(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _swiglu_by_hand(m, x), **TOL[dtype])


def test_gradcheck(device):
    x = randn(2, 3, 4, device=device, dtype=torch.float64, seed=4, scale=2.0).requires_grad_()
    assert torch.autograd.gradcheck(gelu, (x,))
    assert torch.autograd.gradcheck(gelu_tanh, (x,))
    torch.manual_seed(3)
    ff = FeedForward(4, 8).to(device=device, dtype=torch.float64)
    assert torch.autograd.gradcheck(ff, (x,))
    sw = SwiGLU(4, 8, bias=True).to(device=device, dtype=torch.float64)
    assert torch.autograd.gradcheck(sw, (x,))
