"""Tests of the lesson-06 checks (tantra_lib/checks/feed_forward.py): wrong implementations are
rejected with a message naming the mistake, shortcuts and stubs are recognised, and
alternative correct implementations pass the hidden cases too.

The implementations below stand for learner code; they live at module level on purpose.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tantra_lib
from tantra_lib.checks import CheckFailed
from tantra_lib.checks.feed_forward import check_FeedForward, check_gelu

# ----------------------------------------------------------------------------- gelu


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_ndtr(x):
    return x * torch.special.ndtr(x)


def gelu_erfc(x):
    return 0.5 * x * torch.erfc(-x * 0.7071067811865476)


def gelu_tanh_approx(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_relu(x):
    return torch.clamp(x, min=0)


def gelu_sigmoid(x):
    return x * torch.sigmoid(1.702 * x)


def gelu_no_sqrt2(x):
    return 0.5 * x * (1.0 + torch.erf(x))


def gelu_cdf_only(x):
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_no_half(x):
    return x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_shortcut_functional(x):
    return F.gelu(x)


def gelu_shortcut_module(x):
    return nn.GELU()(x)


def gelu_shortcut_tantra_tanh(x):
    return tantra_lib.gelu_tanh(x)


def gelu_stub(x):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- FeedForward


class FFLinear(nn.Module):
    def __init__(self, d_model, d_ff, bias=True):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x):
        return self.fc_out(gelu_erf(self.fc_in(x)))


class FFFunctional(nn.Module):
    """Uses the layers' weights by hand with F.linear, and the allowed tantra_lib.gelu."""

    def __init__(self, d_model, d_ff, bias=True):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x):
        h = tantra_lib.gelu(F.linear(x, self.fc_in.weight, self.fc_in.bias))
        return F.linear(h, self.fc_out.weight, self.fc_out.bias)


class FFEinsum(nn.Module):
    """einsum with the weights, and F.gelu (allowed here: gelu was the previous exercise)."""

    def __init__(self, d_model, d_ff, bias=True):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x):
        h = torch.einsum("...i,oi->...o", x, self.fc_in.weight)
        if self.fc_in.bias is not None:
            h = h + self.fc_in.bias
        y = torch.einsum("...i,oi->...o", F.gelu(h), self.fc_out.weight)
        return y + self.fc_out.bias if self.fc_out.bias is not None else y


class FFReLU(FFLinear):
    def forward(self, x):
        return self.fc_out(torch.relu(self.fc_in(x)))


class FFTanh(FFLinear):
    def forward(self, x):
        return self.fc_out(gelu_tanh_approx(self.fc_in(x)))


class FFNoActivation(FFLinear):
    def forward(self, x):
        return self.fc_out(self.fc_in(x))


class FFActivationAfter(FFLinear):
    def forward(self, x):
        return gelu_erf(self.fc_out(gelu_erf(self.fc_in(x))))


class FFSquare(nn.Module):
    """Hidden layer of size d_model: d_ff ignored."""

    def __init__(self, d_model, d_ff, bias=True):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_model, bias=bias)
        self.fc_out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x):
        return self.fc_out(gelu_erf(self.fc_in(x)))


class FFSwapped(nn.Module):
    """nn.Linear(out, in) by mistake, then patched up with a transpose in forward."""

    def __init__(self, d_model, d_ff, bias=True):
        super().__init__()
        self.fc_in = nn.Linear(d_ff, d_model, bias=bias)
        self.fc_out = nn.Linear(d_model, d_ff, bias=bias)

    def forward(self, x):
        return gelu_erf(x @ self.fc_in.weight) @ self.fc_out.weight


class FFIgnoresBias(FFLinear):
    def __init__(self, d_model, d_ff, bias=True):
        super().__init__(d_model, d_ff, bias=True)


class PlainAffine:
    """A hand-made layer that is not an nn.Module: its tensors never become parameters."""

    def __init__(self, n_in, n_out, bias=True):
        self.weight = torch.randn(n_out, n_in) / math.sqrt(n_in)
        self.bias = torch.zeros(n_out) if bias else None

    def __call__(self, x):
        y = x @ self.weight.T
        return y + self.bias if self.bias is not None else y


class FFUnregistered(nn.Module):
    def __init__(self, d_model, d_ff, bias=True):
        super().__init__()
        self.fc_in = PlainAffine(d_model, d_ff, bias)
        self.fc_out = PlainAffine(d_ff, d_model, bias)

    def forward(self, x):
        return self.fc_out(gelu_erf(self.fc_in(x)))


class FFShortcut(nn.Module):
    def __init__(self, d_model, d_ff, bias=True):
        super().__init__()
        self.inner = tantra_lib.FeedForward(d_model, d_ff, bias=bias)
        self.fc_in, self.fc_out = self.inner.fc_in, self.inner.fc_out

    def forward(self, x):
        return self.inner(x)


class FFSubclass(tantra_lib.FeedForward):
    pass


class FFStub(nn.Module):
    def __init__(self, d_model, d_ff, bias=True):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x):
        raise NotImplementedError()


# ----------------------------------------------------------------------------- tests


def _fails(check, impl, hidden=False):
    with pytest.raises(CheckFailed) as info:
        check(impl, hidden=hidden, quiet=True)
    return info.value.result


@pytest.mark.parametrize("impl", [gelu_erf, gelu_ndtr, gelu_erfc])
def test_gelu_accepts_correct(impl, device):
    assert check_gelu(impl, hidden=True, quiet=True).passed


@pytest.mark.parametrize(
    ("impl", "keyword"),
    [
        (gelu_tanh_approx, "tanh approximation"),
        (gelu_relu, "ReLU"),
        (gelu_sigmoid, "sigmoid approximation"),
        (gelu_no_sqrt2, "√2"),
        (gelu_cdf_only, "without multiplying by x"),
        (gelu_no_half, "0.5"),
    ],
)
def test_gelu_names_the_mistake(impl, keyword, device):
    result = _fails(check_gelu, impl)
    assert result.status == "failed"
    assert keyword in result.message, result.message


@pytest.mark.parametrize("impl", [gelu_shortcut_functional, gelu_shortcut_module, gelu_shortcut_tantra_tanh])
def test_gelu_refuses_shortcuts(impl, device):
    assert _fails(check_gelu, impl).status == "shortcut"


def test_gelu_not_attempted(device):
    assert _fails(check_gelu, gelu_stub).status == "not_attempted"


@pytest.mark.parametrize("impl", [FFLinear, FFFunctional, FFEinsum])
def test_feed_forward_accepts_correct(impl, device):
    assert check_FeedForward(impl, hidden=True, quiet=True).passed


@pytest.mark.parametrize(
    ("impl", "keyword", "hidden"),
    [
        (FFReLU, "ReLU", False),
        (FFTanh, "tanh approximation", False),
        (FFNoActivation, "no activation", False),
        (FFActivationAfter, "after fc_out", False),
        (FFSquare, "fc_in.weight` has shape", False),
        (FFSwapped, "wrong way round", False),
        (FFIgnoresBias, "bias=False", True),
        (FFUnregistered, "not registered", False),
    ],
)
def test_feed_forward_names_the_mistake(impl, keyword, hidden, device):
    result = _fails(check_FeedForward, impl, hidden)
    assert result.status == "failed"
    assert keyword in result.message, result.message


@pytest.mark.parametrize("impl", [FFShortcut, FFSubclass])
def test_feed_forward_refuses_shortcuts(impl, device):
    assert _fails(check_FeedForward, impl).status == "shortcut"


def test_feed_forward_not_attempted(device):
    assert _fails(check_FeedForward, FFStub).status == "not_attempted"


def test_feed_forward_keeps_the_global_rng(device):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_FeedForward(FFLinear, quiet=True)
    assert torch.equal(torch.rand(3), expected)
