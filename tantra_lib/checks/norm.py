"""Checks of lesson 05_layer_norm: ``layer_norm``, ``rms_norm``.

Both are compared with PyTorch's own (``F.layer_norm``, ``F.rms_norm``) computed in float64.
Before reporting plain "wrong values", a check tries the usual mistakes (unbiased variance,
eps outside the square root, normalising over the batch instead of the features, weight or
bias forgotten, RMSNorm that subtracts the mean, ...) and names the one the learner's output
matches. Cases are chosen so those mistakes differ clearly from the answer: few features (so
d and d - 1 differ), features on a tiny scale (so eps matters), a square input (so a missing
keepdim shows). Tested against wrong and right implementations in tests/test_checks_norm.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..device import get_device
from ._core import Mistake, call, compare, exercise, expect

__all__ = ["check_layer_norm", "check_rms_norm"]

FORBID_LAYER_NORM = (
    "torch.nn.functional.layer_norm",
    "torch.layer_norm",
    "torch.native_layer_norm",
    "torch.nn.LayerNorm",
    "torch.nn.functional.group_norm",
    "torch.nn.functional.instance_norm",
    "tantra_lib.layer_norm",
    "tantra_lib.LayerNorm",
)
FORBID_RMS_NORM = (
    "torch.nn.functional.rms_norm",
    "torch.rms_norm",
    "torch.nn.RMSNorm",
    "tantra_lib.rms_norm",
    "tantra_lib.RMSNorm",
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, offset=0.0, dtype=torch.float32):
    x = torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale + offset
    return x.to(dtype).to(get_device())


def _params(d, seed, dtype=torch.float32, bias=True):
    """A weight around 1 and a bias around 0, both clearly not the identity."""
    w = _randn(d, seed=seed, scale=0.5, offset=1.0, dtype=dtype)
    b = _randn(d, seed=seed + 1000, scale=0.5, dtype=dtype) if bias else None
    return w, b


def _tol(dtype) -> float:
    return {torch.float16: 1e-2, torch.bfloat16: 6e-2}.get(dtype, 1e-5)


def _grad_check(fn, name, *args):
    x = _randn(3, 8, seed=99).requires_grad_()
    out = fn(x, *args)
    expect(isinstance(out, torch.Tensor) and out.requires_grad, f"{name}'s output does not carry gradients.",
           "Stay in torch operations; do not call .detach(), .item(), .numpy() or torch.tensor(...) on x.")


def _with_note(fn, note: str):
    """Run fn(); if it raises a Mistake, add `note` (what is special about this case) to the message."""
    try:
        fn()
    except Mistake as e:
        if note:
            raise Mistake(f"{e.message} {note}", e.hint) from None
        raise


# ----------------------------------------------------------------------------- layer_norm

_LN_HINT = ("Over the last dim: mean = x.mean(-1, keepdim=True), var = ((x - mean)**2).mean(-1, keepdim=True) "
            "(divide by d, not d - 1), then (x - mean) / sqrt(var + eps) * weight + bias.")


def _ln(x, w, b, eps, dims=(-1,), correction=0, eps_outside=False, centre=True, sqrt=True):
    """A (possibly wrong) layer norm in float64: the variants the mistakes list uses."""
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, correction=correction)
    if eps_outside:
        denom = var.sqrt() + eps
    else:
        denom = (var + eps).sqrt() if sqrt else var + eps
    y = ((x - mean) if centre else x) / denom
    return y * w + b


def _layer_norm_mistakes(x, w, b, eps):
    d = x.shape[-1]
    right = dict(eps=eps)
    out = [
        (_ln(x, w, b, correction=1, **right) if d > 1 else None,
         f"used the unbiased variance (divided by d - 1 = {d - 1} instead of d = {d}); torch.var and x.std "
         "default to that.",
         "LayerNorm uses the biased variance: ((x - mean)**2).mean(-1), or x.var(-1, unbiased=False)."),
        (_ln(x, w, b, eps_outside=True, **right),
         "added eps outside the square root: (x - mean) / (std + eps).",
         "eps goes inside: (x - mean) / sqrt(var + eps)."),
        (_ln(x, w, b, sqrt=False, **right),
         "divided by the variance instead of its square root (the standard deviation).",
         "Divide by sqrt(var + eps) (or multiply by torch.rsqrt(var + eps))."),
        (_ln(x, w, b, centre=False, **right),
         "normalised x without subtracting the mean from it.",
         "The numerator is x - mean."),
        (_ln(x, 1.0, 0.0, **right), "forgot to apply weight and bias (the learned scale and shift).",
         "Finish with y * weight + bias."),
        (_ln(x, w, 0.0, **right), "forgot to add bias.", "Finish with y * weight + bias."),
        (_ln(x, 1.0, b, **right), "forgot to multiply by weight.", "Finish with y * weight + bias."),
        (_ln(x, b, w, **right), "swapped weight and bias (y * bias + weight).", "Finish with y * weight + bias."),
        (_ln(x, w, b, eps=1e-5), "ignored the `eps` argument (used a fixed 1e-5).",
         "Use the `eps` parameter passed in."),
        (_ln(x, w, b, eps=0.0), "left out eps.", "Add eps to the variance before the square root."),
    ]
    if x.ndim >= 2:
        out += [
            (_ln(x, w, b, dims=(0,), **right),
             "normalised over the batch (dim 0), like BatchNorm, instead of over each token's features.",
             "LayerNorm averages over the last dim: mean(dim=-1, keepdim=True)."),
            (_ln(x, w, b, dims=tuple(range(x.ndim)), **right),
             "normalised over the whole tensor instead of over each token's own features.",
             "Take mean and variance along dim=-1 only, with keepdim=True."),
        ]
        if x.shape[-1] == x.shape[-2]:
            m = x.mean(-1).unsqueeze(-2)  # no keepdim: broadcasts along the wrong axis
            v = ((x - m) ** 2).mean(-1).unsqueeze(-2)
            out.append(((x - m) / (v + eps).sqrt() * w + b,
                        "the mean/variance were broadcast along the wrong axis (keepdim missing).",
                        "Use mean(dim=-1, keepdim=True) so the statistics line up with their row."))
    return out


def _check_one_layer_norm(layer_norm, x, w, b, eps, label, note=""):
    args = (x, w, b) if eps is None else (x, w, b, eps)
    eps_value = 1e-5 if eps is None else eps
    out = call(layer_norm, *args, name="layer_norm")
    d = x.shape[-1]
    expected = F.layer_norm(x.double(), (d,), w.double(), b.double(), eps=eps_value).to(x.dtype)
    mistakes = _layer_norm_mistakes(x.double(), w.double(), b.double(), eps_value) if x.dtype == torch.float32 else ()
    tol = 1e-2 if "large offset" in label and x.dtype == torch.float32 else _tol(x.dtype)
    _with_note(lambda: compare(out, expected, what=f"layer_norm({label})", hint=_LN_HINT, mistakes=mistakes,
                               atol=tol, rtol=tol), note)


@exercise("layer_norm", lesson="05_layer_norm", forbids=FORBID_LAYER_NORM)
def check_layer_norm(layer_norm, hidden=False):
    expect(callable(layer_norm), "`layer_norm` is not a function.",
           "Define `def layer_norm(x, weight, bias, eps=1e-5):`.")
    cases = [  # (x, weight, bias, eps or None for the default, label, note when it fails)
        (_randn(6, 6, seed=5), *_params(6, 6), None, "a square (6, 6) x", ""),
        (_randn(4, 8, seed=1), *_params(8, 2), None, "x of shape (4, 8)", ""),
        (_randn(2, 5, 4, seed=3, scale=2.0, offset=1.0), *_params(4, 4), None,
         "x of shape (2, 5, 4): only 4 features", ""),
        (_randn(3, 16, seed=7, scale=1e-3), *_params(16, 8), None,
         "features on a tiny scale (std 1e-3)", "(Here the variance is about 1e-6, so where eps goes matters.)"),
        (_randn(5, 8, seed=9, scale=0.5), *_params(8, 10), 0.1, "x of shape (5, 8) with eps=0.1", ""),
    ]
    if hidden:
        rows = torch.tensor([3.0, -2.0, 0.0], dtype=torch.float64).repeat_interleave(8).reshape(3, 8)
        cases += [
            (_randn(2, 3, 4, 32, seed=11), *_params(32, 12), None, "a 4-d x of shape (2, 3, 4, 32)", ""),
            (_randn(1, 1, seed=13), *_params(1, 14), None, "a single feature (d = 1)", ""),
            (_randn(6, 32, seed=15, offset=1e4), *_params(32, 16), None, "rows with a large offset (1e4)",
             "(The rows sit around 1e4: computing the variance as mean(x**2) - mean(x)**2 cancels catastrophically "
             "there; subtract the mean first.)"),
            (rows.to(torch.float32).to(get_device()), *_params(8, 18), None, "constant rows",
             "(A constant row has variance 0: only eps keeps (x - mean) / sqrt(var + eps) from being 0/0.)"),
            (_randn(8, 24, seed=19, dtype=torch.float64), *_params(24, 20, torch.float64), None, "float64 x", ""),
            (_randn(4, 24, seed=21, dtype=torch.float16), *_params(24, 22, torch.float16), None, "float16 x", ""),
            (_randn(4, 24, seed=23, dtype=torch.bfloat16), *_params(24, 24, torch.bfloat16), None, "bfloat16 x", ""),
            (_randn(12, 3, 5, seed=25).transpose(0, 2), *_params(12, 26), None,
             "a non-contiguous (transposed) x of shape (5, 3, 12)", ""),
        ]
    for x, w, b, eps, label, note in cases:
        _check_one_layer_norm(layer_norm, x, w, b, eps, label, note)
    w, b = _params(8, 30)
    _grad_check(layer_norm, "layer_norm", w, b)


# ----------------------------------------------------------------------------- rms_norm

_RMS_HINT = "Over the last dim: rms = sqrt((x**2).mean(-1, keepdim=True) + eps), then x / rms * weight."


def _rms(x, w, eps, dims=(-1,), centre=False, reduce="mean", sqrt=True, eps_outside=False):
    """A (possibly wrong) RMS norm in float64: the variants the mistakes list uses."""
    if centre:
        x = x - x.mean(dim=dims, keepdim=True)
    sq = x.pow(2).mean(dim=dims, keepdim=True) if reduce == "mean" else x.pow(2).sum(dim=dims, keepdim=True)
    if eps_outside:
        denom = sq.sqrt() + eps
    else:
        denom = (sq + eps).sqrt() if sqrt else sq + eps
    return x / denom * w


def _rms_norm_mistakes(x, w, eps):
    d = x.shape[-1]
    out = [
        (_rms(x, w, eps, centre=True),
         "subtracted the mean first: that is LayerNorm without a bias, RMSNorm does not centre.",
         "RMSNorm only rescales: x / sqrt(mean(x**2) + eps) * weight, no `x - mean`."),
        (x / (x.std(dim=-1, keepdim=True) + eps) * w if d > 1 else None,
         "divided by the standard deviation (which centres x and uses d - 1), not by the root mean square.",
         _RMS_HINT),
        (_rms(x, w, eps, eps_outside=True), "added eps outside the square root: x / (rms + eps).",
         "eps goes inside: x / sqrt(mean(x**2) + eps)."),
        (_rms(x, w, eps, reduce="sum"),
         "summed the squares instead of averaging them (x.norm(dim=-1) is sqrt of the sum).",
         "Use the mean of x**2 over the last dim, not the sum."),
        (_rms(x, w, eps, sqrt=False), "forgot the square root: divided by mean(x**2) + eps.", _RMS_HINT),
        (_rms(x, 1.0, eps), "forgot to multiply by weight.", "Finish with * weight."),
        (_rms(x, w, 1e-6), "ignored the `eps` argument (used a fixed 1e-6).", "Use the `eps` parameter passed in."),
        (_rms(x, w, 0.0), "left out eps.", "Add eps to the mean of squares before the square root."),
    ]
    if x.ndim >= 2:
        out += [
            (_rms(x, w, eps, dims=(0,)),
             "normalised over the batch (dim 0) instead of over each token's features.",
             "Average over the last dim: (x**2).mean(dim=-1, keepdim=True)."),
            (_rms(x, w, eps, dims=tuple(range(x.ndim))),
             "normalised over the whole tensor instead of over each token's own features.",
             "Average along dim=-1 only, with keepdim=True."),
        ]
        if x.shape[-1] == x.shape[-2]:
            ms = x.pow(2).mean(-1).unsqueeze(-2)  # no keepdim: broadcasts along the wrong axis
            out.append((x / (ms + eps).sqrt() * w, "the mean of squares was broadcast along the wrong axis "
                        "(keepdim missing).", "Use mean(dim=-1, keepdim=True)."))
    return out


def _check_one_rms_norm(rms_norm, x, w, eps, label, note=""):
    eps_value = 1e-6 if eps is None else eps
    out = call(rms_norm, *((x, w) if eps is None else (x, w, eps)), name="rms_norm")
    expected = F.rms_norm(x.double(), (x.shape[-1],), w.double(), eps=eps_value).to(x.dtype)
    mistakes = _rms_norm_mistakes(x.double(), w.double(), eps_value) if x.dtype == torch.float32 else ()
    tol = _tol(x.dtype)
    _with_note(lambda: compare(out, expected, what=f"rms_norm({label})", hint=_RMS_HINT, mistakes=mistakes,
                               atol=tol, rtol=tol), note)


@exercise("rms_norm", lesson="05_layer_norm", forbids=FORBID_RMS_NORM)
def check_rms_norm(rms_norm, hidden=False):
    expect(callable(rms_norm), "`rms_norm` is not a function.", "Define `def rms_norm(x, weight, eps=1e-6):`.")
    cases = [  # (x, weight, eps or None for the default, label, note when it fails)
        (_randn(6, 6, seed=45, offset=-0.5), _params(6, 46)[0], None, "a square (6, 6) x", ""),
        (_randn(4, 8, seed=41, offset=0.5), _params(8, 42)[0], None, "x of shape (4, 8)", ""),
        (_randn(2, 5, 4, seed=43, scale=2.0, offset=1.0), _params(4, 44)[0], None,
         "x of shape (2, 5, 4): only 4 features", ""),
        (_randn(3, 16, seed=47, scale=1e-3), _params(16, 48)[0], None, "features on a tiny scale (1e-3)",
         "(Here mean(x**2) is about 1e-6, so where eps goes matters.)"),
        (_randn(5, 8, seed=49, scale=0.2), _params(8, 50)[0], 0.01, "x of shape (5, 8) with eps=0.01", ""),
    ]
    if hidden:
        cases += [
            (_randn(2, 3, 4, 32, seed=51), _params(32, 52)[0], None, "a 4-d x of shape (2, 3, 4, 32)", ""),
            (_randn(7, seed=53), _params(7, 54)[0], None, "a 1-d x (one token)", ""),
            (_randn(6, 32, seed=55, offset=1e3), _params(32, 56)[0], None, "rows with a large offset (1e3)", ""),
            (torch.zeros(3, 8, device=get_device()), _params(8, 58)[0], None, "all-zero rows",
             "(An all-zero row has rms 0: only eps keeps x / sqrt(mean(x**2) + eps) from being 0/0.)"),
            (_randn(8, 24, seed=59, dtype=torch.float64), _params(24, 60, torch.float64)[0], None, "float64 x", ""),
            (_randn(4, 24, seed=61, dtype=torch.float16), _params(24, 62, torch.float16)[0], None, "float16 x", ""),
            (_randn(4, 24, seed=63, dtype=torch.bfloat16), _params(24, 64, torch.bfloat16)[0], None,
             "bfloat16 x", ""),
            (_randn(12, 3, 5, seed=65).transpose(0, 2), _params(12, 66)[0], None,
             "a non-contiguous (transposed) x of shape (5, 3, 12)", ""),
        ]
    for x, w, eps, label, note in cases:
        _check_one_rms_norm(rms_norm, x, w, eps, label, note)
    _grad_check(rms_norm, "rms_norm", _params(8, 70)[0])
