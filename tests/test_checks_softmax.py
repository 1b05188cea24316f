"""Tests of the lesson 01 checks (tantra_lib/checks/softmax.py).

The implementations at module level stand for learner code: plausible wrong ones must be
rejected with a message naming the mistake, correct ones written differently must pass the
hidden cases too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tantra_lib.checks import outcome
from tantra_lib.checks.softmax import check_log_softmax, check_masked_softmax, check_softmax

# ----------------------------------------------------------------------------- softmax


def softmax_wrong_axis(x, dim=-1):
    d = (dim % x.ndim) - 1  # the axis before the asked one
    e = (x - x.amax(dim=d, keepdim=True)).exp()
    return e / e.sum(dim=d, keepdim=True)


def softmax_no_max(x, dim=-1):
    e = x.exp()
    return e / e.sum(dim=dim, keepdim=True)


def softmax_global_max(x, dim=-1):
    e = (x - x.max()).exp()
    return e / e.sum(dim=dim, keepdim=True)


def softmax_not_normalised(x, dim=-1):
    return (x - x.amax(dim=dim, keepdim=True)).exp()


def softmax_total_sum(x, dim=-1):
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum()


def softmax_in_place(x, dim=-1):
    x -= x.amax(dim=dim, keepdim=True).detach()
    e = x.exp()
    return e / e.sum(dim=dim, keepdim=True)


def softmax_detached(x, dim=-1):
    x = x.detach()
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


def softmax_shortcut(x, dim=-1):
    return F.softmax(x, dim=dim)


def softmax_method_shortcut(x, dim=-1):
    return x.softmax(dim)


def softmax_todo(x, dim=-1):
    raise NotImplementedError()


def softmax_logsumexp(x, dim=-1):
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (work - torch.logsumexp(work, dim=dim, keepdim=True)).exp().to(x.dtype)


def softmax_rowwise(x, dim=-1):
    """Move the axis last, flatten the rest and normalise row by row with a Python loop."""
    moved = x.movedim(dim, -1)
    flat = moved.reshape(-1, moved.shape[-1]).double()
    rows = []
    for row in flat:
        e = torch.exp(row - row.max())
        rows.append(e / e.sum())
    return torch.stack(rows).reshape(moved.shape).movedim(-1, dim).to(x.dtype)


@pytest.mark.parametrize("impl, keyword", [
    (softmax_wrong_axis, "instead of dim"),
    (softmax_no_max, "overflow"),
    (softmax_global_max, "whole tensor"),
    (softmax_not_normalised, "not normalised"),
    (softmax_total_sum, "whole tensor"),
    (softmax_in_place, "in place"),
    (softmax_detached, "gradients"),
])
def test_softmax_rejects_mistake(device, impl, keyword):
    r = outcome(check_softmax, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


@pytest.mark.parametrize("impl", [softmax_shortcut, softmax_method_shortcut])
def test_softmax_shortcut(impl):
    assert outcome(check_softmax, impl).status == "shortcut"


def test_softmax_not_attempted():
    assert outcome(check_softmax, softmax_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [softmax_logsumexp, softmax_rowwise])
def test_softmax_accepts_correct(device, impl):
    assert outcome(check_softmax, impl, hidden=True).passed


# ----------------------------------------------------------------------------- log_softmax


def log_softmax_of_softmax(x, dim=-1):
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return torch.log(e / e.sum(dim=dim, keepdim=True))


def log_softmax_no_log(x, dim=-1):
    s = x - x.amax(dim=dim, keepdim=True)
    return s - s.exp().sum(dim=dim, keepdim=True)


def log_softmax_wrong_axis(x, dim=-1):
    d = (dim % x.ndim) - 1
    s = x - x.amax(dim=d, keepdim=True)
    return s - s.exp().sum(dim=d, keepdim=True).log()


def log_softmax_returns_probs(x, dim=-1):
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax_no_max(x, dim=-1):
    return x - x.exp().sum(dim=dim, keepdim=True).log()


def log_softmax_shortcut(x, dim=-1):
    return torch.log_softmax(x, dim)


def log_softmax_todo(x, dim=-1):
    raise NotImplementedError


def log_softmax_logsumexp(x, dim=-1):
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (work - work.logsumexp(dim=dim, keepdim=True)).to(x.dtype)


def log_softmax_two_steps(x, dim=-1):
    """max first, then a log1p of the other terms: another stable formula."""
    work = x.double()
    m = work.amax(dim=dim, keepdim=True)
    s = work - m
    rest = s.exp().sum(dim=dim, keepdim=True) - 1.0  # the max contributes exactly 1
    return (s - torch.log1p(rest)).to(x.dtype)


@pytest.mark.parametrize("impl, keyword", [
    (log_softmax_of_softmax, "log(softmax(x))"),
    (log_softmax_no_log, "log of the sum"),
    (log_softmax_wrong_axis, "instead of dim"),
    (log_softmax_returns_probs, "probabilities"),
    (log_softmax_no_max, "overflow"),
])
def test_log_softmax_rejects_mistake(device, impl, keyword):
    r = outcome(check_log_softmax, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_log_softmax_shortcut():
    assert outcome(check_log_softmax, log_softmax_shortcut).status == "shortcut"


def test_log_softmax_not_attempted():
    assert outcome(check_log_softmax, log_softmax_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [log_softmax_logsumexp, log_softmax_two_steps])
def test_log_softmax_accepts_correct(device, impl):
    assert outcome(check_log_softmax, impl, hidden=True).passed


# ----------------------------------------------------------------------------- masked_softmax


def _stable(s, dim):
    e = (s - s.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


def masked_inverted(x, mask, dim=-1):
    return _stable(x.masked_fill(mask, -1e9), dim)


def masked_neg_inf_nan(x, mask, dim=-1):
    return _stable(x.masked_fill(~mask, float("-inf")), dim)


def masked_big_negative(x, mask, dim=-1):
    return _stable(x.masked_fill(~mask, -1e9), dim)


def masked_after_softmax(x, mask, dim=-1):
    return _stable(x, dim) * mask


def masked_ignored(x, mask, dim=-1):
    return _stable(x, dim)


def masked_shortcut(x, mask, dim=-1):
    return F.softmax(x.masked_fill(~mask, -1e9), dim=dim) * mask


def masked_todo(x, mask, dim=-1):
    raise NotImplementedError()


def masked_nan_to_num(x, mask, dim=-1):
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    s = work.masked_fill(~mask, float("-inf"))
    e = (s - s.amax(dim=dim, keepdim=True)).exp()
    return torch.nan_to_num(e / e.sum(dim=dim, keepdim=True), nan=0.0).to(x.dtype)


def masked_multiply(x, mask, dim=-1):
    """Zero the exponentials by multiplying with the mask; the max is taken over kept entries."""
    work = x.double()
    keep = mask.expand_as(work).to(work.dtype)
    m = work.masked_fill(keep == 0, -torch.inf).amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(torch.minimum(work - m, torch.zeros_like(work))) * keep  # masked entries may exceed m
    total = e.sum(dim=dim, keepdim=True)
    return torch.where(total > 0, e / torch.where(total > 0, total, torch.ones_like(total)), e).to(x.dtype)


@pytest.mark.parametrize("impl, keyword", [
    (masked_inverted, "inverted"),
    (masked_neg_inf_nan, "NaN"),
    (masked_big_negative, "all zeros"),
    (masked_after_softmax, "renormalising"),
    (masked_ignored, "ignored"),
])
def test_masked_softmax_rejects_mistake(device, impl, keyword):
    r = outcome(check_masked_softmax, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_masked_softmax_shortcut():
    assert outcome(check_masked_softmax, masked_shortcut).status == "shortcut"


def test_masked_softmax_not_attempted():
    assert outcome(check_masked_softmax, masked_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [masked_nan_to_num, masked_multiply])
def test_masked_softmax_accepts_correct(device, impl):
    assert outcome(check_masked_softmax, impl, hidden=True).passed
