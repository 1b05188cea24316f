"""Tests of the lesson-05 checks (tantra_lib/checks/norm.py): wrong implementations are
rejected with a message naming the mistake, shortcuts and stubs are recognised, and
alternative correct implementations pass the hidden cases too.

The implementations below stand for learner code; they live at module level on purpose.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tantra_lib
from tantra_lib.checks import CheckFailed
from tantra_lib.checks.norm import check_layer_norm, check_rms_norm

# ----------------------------------------------------------------------------- layer_norm: right


def ln_two_pass(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ln_var_mean(x, weight, bias, eps=1e-5):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return torch.addcmul(bias, (x - mean) * torch.rsqrt(var + eps), weight)


def ln_rows_loop(x, weight, bias, eps=1e-5):
    rows = x.reshape(-1, x.shape[-1])
    out = []
    for row in rows:
        m = row.sum() / row.numel()
        v = ((row - m) * (row - m)).sum() / row.numel()
        out.append((row - m) / (v + eps).sqrt() * weight + bias)
    return torch.stack(out).reshape(x.shape)


def ln_einsum(x, weight, bias, eps=1e-5):
    d = x.shape[-1]
    centred = x - torch.einsum("...i->...", x).unsqueeze(-1) / d
    var = torch.einsum("...i,...i->...", centred, centred).unsqueeze(-1) / d
    return torch.einsum("...i,i->...i", centred / torch.sqrt(var + eps), weight) + bias


# ----------------------------------------------------------------------------- layer_norm: wrong


def ln_unbiased(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(dim=-1, keepdim=True) + eps) * weight + bias


def ln_eps_outside(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps) * weight + bias


def ln_batch_axis(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=0, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=0, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ln_no_affine(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def ln_no_keepdim(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1)
    var = ((x - mean) ** 2).mean(dim=-1)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ln_fixed_eps(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def ln_no_eps(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var) * weight + bias


def ln_one_pass(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = (x * x).mean(dim=-1, keepdim=True) - mean * mean  # cancels for large offsets
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def ln_in_place(x, weight, bias, eps=1e-5):
    x -= x.mean(dim=-1, keepdim=True)
    return x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + eps) * weight + bias


def ln_shortcut_functional(x, weight, bias, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def ln_shortcut_module(x, weight, bias, eps=1e-5):
    m = torch.nn.LayerNorm(x.shape[-1], eps=eps).to(x.device, x.dtype)
    with torch.no_grad():
        m.weight.copy_(weight)
        m.bias.copy_(bias)
    return m(x)


def ln_shortcut_tantra(x, weight, bias, eps=1e-5):
    return tantra_lib.layer_norm(x, weight, bias, eps)


def ln_stub(x, weight, bias, eps=1e-5):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- rms_norm


def rms_plain(x, weight, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def rms_norm_formula(x, weight, eps=1e-6):
    d = x.shape[-1]
    return x * torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True) ** 2 / d + eps) * weight


def rms_einsum(x, weight, eps=1e-6):
    ms = torch.einsum("...i,...i->...", x, x).unsqueeze(-1) / x.shape[-1]
    return torch.einsum("...i,i->...i", x / torch.sqrt(ms + eps), weight)


def rms_centred(x, weight, eps=1e-6):
    x = x - x.mean(dim=-1, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def rms_eps_outside(x, weight, eps=1e-6):
    return x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + eps) * weight


def rms_sum(x, weight, eps=1e-6):
    return x / torch.sqrt(x.pow(2).sum(dim=-1, keepdim=True) + eps) * weight


def rms_no_sqrt(x, weight, eps=1e-6):
    return x / (x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def rms_batch_axis(x, weight, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(dim=0, keepdim=True) + eps) * weight


def rms_no_weight(x, weight, eps=1e-6):
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def rms_std(x, weight, eps=1e-6):
    return x / (x.std(dim=-1, keepdim=True) + eps) * weight


def rms_shortcut_functional(x, weight, eps=1e-6):
    return F.rms_norm(x, x.shape[-1:], weight, eps)


def rms_shortcut_module(x, weight, eps=1e-6):
    m = torch.nn.RMSNorm(x.shape[-1], eps=eps).to(x.device, x.dtype)
    with torch.no_grad():
        m.weight.copy_(weight)
    return m(x)


def rms_shortcut_tantra(x, weight, eps=1e-6):
    return tantra_lib.rms_norm(x, weight, eps)


def rms_stub(x, weight, eps=1e-6):
    raise NotImplementedError()


# ----------------------------------------------------------------------------- tests


def _fails(check, impl, hidden=False):
    with pytest.raises(CheckFailed) as info:
        check(impl, hidden=hidden, quiet=True)
    return info.value.result


@pytest.mark.parametrize("impl", [ln_two_pass, ln_var_mean, ln_rows_loop, ln_einsum])
def test_layer_norm_accepts_correct(impl, device):
    assert check_layer_norm(impl, hidden=True, quiet=True).passed


@pytest.mark.parametrize(
    ("impl", "keyword", "hidden"),
    [
        (ln_unbiased, "unbiased variance", False),
        (ln_eps_outside, "outside the square root", False),
        (ln_batch_axis, "batch", False),
        (ln_no_affine, "weight and bias", False),
        (ln_no_keepdim, "keepdim", False),
        (ln_fixed_eps, "ignored the `eps` argument", False),
        (ln_no_eps, "left out eps", False),
        (ln_one_pass, "cancels catastrophically", True),
        (ln_in_place, "in place", False),
    ],
)
def test_layer_norm_names_the_mistake(impl, keyword, hidden, device):
    result = _fails(check_layer_norm, impl, hidden)
    assert result.status == "failed"
    assert keyword in result.message, result.message


@pytest.mark.parametrize("impl", [ln_shortcut_functional, ln_shortcut_module, ln_shortcut_tantra])
def test_layer_norm_refuses_shortcuts(impl, device):
    assert _fails(check_layer_norm, impl).status == "shortcut"


def test_layer_norm_not_attempted(device):
    assert _fails(check_layer_norm, ln_stub).status == "not_attempted"


@pytest.mark.parametrize("impl", [rms_plain, rms_norm_formula, rms_einsum])
def test_rms_norm_accepts_correct(impl, device):
    assert check_rms_norm(impl, hidden=True, quiet=True).passed


@pytest.mark.parametrize(
    ("impl", "keyword"),
    [
        (rms_centred, "subtracted the mean"),
        (rms_eps_outside, "outside the square root"),
        (rms_sum, "summed the squares"),
        (rms_no_sqrt, "square root"),
        (rms_batch_axis, "batch"),
        (rms_no_weight, "weight"),
        (rms_std, "standard deviation"),
    ],
)
def test_rms_norm_names_the_mistake(impl, keyword, device):
    result = _fails(check_rms_norm, impl)
    assert result.status == "failed"
    assert keyword in result.message, result.message


@pytest.mark.parametrize("impl", [rms_shortcut_functional, rms_shortcut_module, rms_shortcut_tantra])
def test_rms_norm_refuses_shortcuts(impl, device):
    assert _fails(check_rms_norm, impl).status == "shortcut"


def test_rms_norm_not_attempted(device):
    assert _fails(check_rms_norm, rms_stub).status == "not_attempted"


def test_layer_norm_constant_rows_need_eps(device):
    # the no-eps version passes nothing hidden: constant rows give 0/0
    result = _fails(check_layer_norm, ln_no_eps, hidden=True)
    assert "eps" in result.message
