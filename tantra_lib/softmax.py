"""Softmax, log-softmax and masked softmax — turning scores into probabilities.

softmax(x)_i = exp(x_i) / sum_j exp(x_j). Subtracting the row maximum first changes nothing
mathematically (the factor exp(-max) cancels) but keeps exp() from overflowing, so logits
of 1e4 give probabilities, not NaN.

Taught in lessons/01_softmax. Checked against F.softmax / F.log_softmax in
tests/test_lib_softmax.py.
"""

from __future__ import annotations

import torch

from .shortcut_guard import reference

__all__ = ["softmax", "log_softmax", "masked_softmax"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(x: torch.Tensor, fn: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{fn} needs a floating-point tensor, got {got}")
    # Half precision sums lose digits fast; do the arithmetic in float32, return the input dtype.
    return x.float() if x.dtype in _LOW_PRECISION else x


def _recorded(t: torch.Tensor) -> bool:
    """True when autograd records operations on `t` (it may then need `t` for the backward
    pass, so `t` must not be overwritten in place)."""
    return torch.is_grad_enabled() and t.requires_grad


@reference("softmax")
def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along `dim`.

    x: (..., n) any float dtype, any device  ->  (..., n), same dtype; entries in [0, 1]
    that sum to 1 along `dim`.
    """
    xf = _upcast(x, "softmax")
    # The max only shifts the exponent; detaching it skips a gradient that is exactly zero.
    # exp_ works in place on the fresh difference: one (..., n) temporary fewer.
    e = (xf - xf.amax(dim=dim, keepdim=True).detach()).exp_()
    total = e.sum(dim=dim, keepdim=True)
    # Under autograd e is kept for the backward pass, so divide out of place; otherwise
    # (inference) normalise e in place: no third (..., n) tensor, half the memory traffic.
    probs = e / total if _recorded(e) else e.div_(total)
    return probs.to(x.dtype)


@reference("log_softmax")
def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(softmax(x)) without ever taking the log of a tiny number.

    log_softmax(x)_i = (x_i - m) - log(sum_j exp(x_j - m)), m = max_j x_j.
    x: (..., n) -> (..., n), same dtype; every entry <= 0.
    """
    xf = _upcast(x, "log_softmax")
    shifted = xf - xf.amax(dim=dim, keepdim=True).detach()
    return (shifted - shifted.exp().sum(dim=dim, keepdim=True).log()).to(x.dtype)


@reference("masked_softmax")
def masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the entries where `mask` is True; masked entries get probability 0.

    x: (..., n) float; mask: bool, broadcastable to x, True = keep.  ->  (..., n).
    A row whose entries are all masked returns all zeros (never NaN).
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True = keep), got {got}")
    xf = _upcast(x, "masked_softmax")
    dropped = ~mask
    scores = xf.masked_fill(dropped, torch.finfo(xf.dtype).min)
    e = (scores - scores.amax(dim=dim, keepdim=True).detach()).exp_()
    # exp of a masked entry is forced to 0 (not exp(min - max), which is 1 in a fully
    # masked row), so a fully masked row sums to 0 ...
    e = e.masked_fill(dropped, 0.0) if _recorded(e) else e.masked_fill_(dropped, 0.0)
    # ... and dividing by max(total, tiny) turns its 0/0 into 0/tiny = 0.
    total = e.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(xf.dtype).tiny)
    probs = e / total if _recorded(e) else e.div_(total)
    return probs.to(x.dtype)
