"""Checks of lesson 01_softmax: ``softmax``, ``log_softmax``, ``masked_softmax``.

Each check compares the learner's function with PyTorch's on several inputs, and before
reporting a plain "wrong values" it tries the typical mistakes (wrong axis, no max
subtraction, a global instead of a per-row max, log of the softmax, inverted mask, ...) and
names the one the learner's output matches. Tested against wrong and right implementations
in tests/test_checks_softmax.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..device import get_device
from ._core import Mistake, call, compare, exercise, expect

__all__ = ["check_softmax", "check_log_softmax", "check_masked_softmax"]

FORBID_SOFTMAX = (
    "torch.nn.functional.softmax",
    "torch.softmax",
    "torch.Tensor.softmax",
    "torch.special.softmax",
    "torch._softmax",
    "tantra_lib.softmax",
)
FORBID_LOG_SOFTMAX = (
    "torch.nn.functional.log_softmax",
    "torch.log_softmax",
    "torch.Tensor.log_softmax",
    "torch.special.log_softmax",
    "torch._log_softmax",
    "tantra_lib.log_softmax",
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype).to(get_device())


def _stiff(dtype=torch.float32):
    """Rows on very different scales: a global max underflows the lower rows."""
    return torch.tensor([[1000.0, 999.0, 998.0], [-1000.0, -999.0, -1001.0], [0.5, -0.5, 0.0]],
                        dtype=dtype, device=get_device())


# ----------------------------------------------------------------------------- softmax

_SOFTMAX_HINT = "softmax(x)_i = exp(x_i - m) / Σ_j exp(x_j - m) with m the max along `dim` (keepdim=True)."


def _softmax_mistakes(x, dim):
    d = dim % x.ndim
    other = (d - 1) % x.ndim
    e = (x - x.amax()).exp()  # global max
    shifted = (x - x.amax(dim=dim, keepdim=True)).exp()  # the right numerators
    out = [
        (F.softmax(x, dim=other), f"normalised along dim {other - x.ndim} instead of dim={dim}.",
         "Pass `dim` to every max/sum you take, and keep it with keepdim=True."),
        (x.exp() / x.exp().sum(), "divided by the sum over the whole tensor, not along `dim`.",
         "Sum along `dim` with keepdim=True so each row is divided by its own total."),
        (x.exp(), "the exponentials are not normalised (rows do not sum to 1).",
         "Divide exp(x - m) by its sum along `dim`."),
        (shifted, "the exponentials are not normalised (rows do not sum to 1).",
         "Divide exp(x - m) by its sum along `dim`."),
        (shifted / shifted.sum(), "divided by the sum over the whole tensor, not along `dim`.",
         "Sum along `dim` with keepdim=True so each row is divided by its own total."),
        (e / e.sum(dim=dim, keepdim=True),
         "subtracted the max of the whole tensor, not of each row: rows far below it underflow to 0/0.",
         "Take the max along `dim`: x.amax(dim=dim, keepdim=True)."),
    ]
    if x.ndim >= 2 and x.shape[-1] == x.shape[-2] and d == x.ndim - 1:
        m = x.amax(dim=d)  # no keepdim: broadcasts along the wrong axis for square inputs
        ee = (x - m.unsqueeze(-2)).exp()
        out.append((ee / ee.sum(dim=d, keepdim=True),
                    "the max was broadcast along the wrong axis (keepdim missing).",
                    "Use x.amax(dim=dim, keepdim=True) so the max lines up with its row."))
    return out


def _check_one_softmax(softmax, x, dim, label):
    kwargs = {} if dim == -1 else {"dim": dim}
    out = call(softmax, x, name="softmax", **kwargs)
    expected = F.softmax(x.double(), dim=dim).to(x.dtype)
    tol = 1e-5 if x.dtype in (torch.float32, torch.float64) else 1e-2
    if isinstance(out, torch.Tensor) and bool(torch.isnan(out).any()) and bool(torch.isfinite(expected).all()):
        e = (x - x.amax()).exp()
        global_max = e / e.sum(dim=dim, keepdim=True)  # NaN exactly where rows underflow to 0/0
        if out.shape == x.shape and torch.equal(torch.isnan(out).cpu(), torch.isnan(global_max).cpu()):
            raise Mistake(f"softmax({label}) gives NaN: you subtracted the max of the whole tensor, not of "
                          "each row, so rows far below it underflow to 0/0.",
                          "Take the max along `dim`: x.amax(dim=dim, keepdim=True).")
        raise Mistake(f"softmax({label}) gives NaN for large logits: exp() overflowed.",
                      "Subtract the maximum along `dim` before exp(); it cancels in the ratio but keeps exp() ≤ 1.")
    compare(out, expected, what=f"softmax({label})", hint=_SOFTMAX_HINT,
            mistakes=_softmax_mistakes(x.double(), dim) if x.dtype == torch.float32 else (),
            atol=tol, rtol=tol)


@exercise("softmax", lesson="01_softmax", forbids=FORBID_SOFTMAX)
def check_softmax(softmax, hidden=False):
    expect(callable(softmax), "`softmax` is not a function.", "Define `def softmax(x, dim=-1):`.")
    cases = [
        (_randn(4, 7, seed=1), -1, "x of shape (4, 7)"),
        (_randn(5, 5, seed=2, scale=3), -1, "a (5, 5) x"),
        (_randn(2, 3, 6, seed=3), 1, "x of shape (2, 3, 6) with dim=1"),
        (_randn(3, 4, seed=4, scale=1e4), -1, "logits of size ~1e4"),
        (_stiff(), -1, "rows on very different scales"),
    ]
    if hidden:
        cases += [
            (_randn(2, 3, 4, 5, seed=5), 0, "a 4-d x with dim=0"),
            (_randn(1, 1, seed=6), -1, "a single logit"),
            (_randn(6, 9, seed=7, dtype=torch.float64), -1, "float64 x"),
            (_randn(8, 4, seed=8).t(), -1, "a non-contiguous (transposed) x"),
            (_randn(3, 33, seed=9, dtype=torch.float16), -1, "float16 x"),
            (_randn(3, 33, seed=10, dtype=torch.bfloat16), -1, "bfloat16 x"),
            (torch.full((2, 4), 3.0, device=get_device()), -1, "equal logits"),
        ]
    for x, dim, label in cases:
        _check_one_softmax(softmax, x, dim, label)
    # gradients must flow (a .detach() or a NumPy detour would break training later)
    x = _randn(3, 5, seed=11).requires_grad_()
    out = softmax(x)
    expect(out.requires_grad, "softmax's output does not carry gradients.",
           "Stay in torch operations; do not call .detach(), .numpy() or torch.tensor(...) on x.")


# ----------------------------------------------------------------------------- log_softmax

_LOG_SOFTMAX_HINT = "log_softmax(x) = (x - m) - log Σ_j exp(x_j - m), m = max along `dim` (keepdim=True)."


def _log_softmax_mistakes(x, dim):
    d = dim % x.ndim
    other = (d - 1) % x.ndim
    m = x.amax(dim=dim, keepdim=True)
    return [
        (F.log_softmax(x, dim=other), f"normalised along dim {other - x.ndim} instead of dim={dim}.",
         "Pass `dim` to every max/sum and use keepdim=True."),
        (x - m - (x - m).exp().sum(dim=dim, keepdim=True),
         "forgot the log of the sum: subtracted Σ exp(x - m) itself.",
         "It is log Σ exp(x - m) that you subtract."),
        (x - x.exp().sum(dim=dim, keepdim=True).log() * 0 - m, "subtracted only the max (no log-sum-exp term).",
         _LOG_SOFTMAX_HINT),
        (F.softmax(x, dim=dim), "returned probabilities (softmax), not their logarithm.", _LOG_SOFTMAX_HINT),
        (x - x.exp().sum().log(), "took the log-sum-exp over the whole tensor, not along `dim`.",
         "Sum along `dim` with keepdim=True."),
    ]


@exercise("log_softmax", lesson="01_softmax", forbids=FORBID_LOG_SOFTMAX)
def check_log_softmax(log_softmax, hidden=False):
    expect(callable(log_softmax), "`log_softmax` is not a function.", "Define `def log_softmax(x, dim=-1):`.")
    cases = [
        (_randn(4, 7, seed=21), -1, "x of shape (4, 7)"),
        (_randn(2, 3, 6, seed=22), 1, "x of shape (2, 3, 6) with dim=1"),
        (_randn(3, 5, seed=23, scale=1e4), -1, "logits of size ~1e4"),
        (torch.tensor([[0.0, -200.0, 5.0]], device=get_device()), -1, "a logit 200 below the others"),
    ]
    if hidden:
        cases += [
            (_randn(2, 3, 4, seed=24, dtype=torch.float64), 0, "float64 x with dim=0"),
            (_randn(7, 3, seed=25).t(), -1, "a non-contiguous x"),
            (_randn(3, 17, seed=26, dtype=torch.bfloat16), -1, "bfloat16 x"),
            (_stiff(), -1, "rows on very different scales"),
        ]
    for x, dim, label in cases:
        kwargs = {} if dim == -1 else {"dim": dim}
        out = call(log_softmax, x, name="log_softmax", **kwargs)
        expected = F.log_softmax(x.double(), dim=dim).to(x.dtype)
        if isinstance(out, torch.Tensor) and out.shape == expected.shape and bool(torch.isfinite(expected).all()):
            all_inf_row = torch.isneginf(out).all(dim=dim)  # x - log(inf) = -inf everywhere
            expect(not bool(torch.isnan(out).any() or torch.isposinf(out).any() or all_inf_row.any()),
                   f"log_softmax({label}) gives NaN/inf: exp() overflowed (or a whole row underflowed to "
                   "log 0).", "Subtract the max along `dim` before exp().")
            expect(not bool(torch.isinf(out).any()),
                   f"log_softmax({label}) gives -inf where the answer is finite: log(softmax(x)) "
                   "underflows when a probability rounds to 0.",
                   "Do not take the log of the softmax; use (x - m) - log Σ exp(x - m).")
        tol = 1e-5 if x.dtype in (torch.float32, torch.float64) else 2e-2
        compare(out, expected, what=f"log_softmax({label})", hint=_LOG_SOFTMAX_HINT,
                mistakes=_log_softmax_mistakes(x.double(), dim) if x.dtype == torch.float32 else (),
                atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- masked_softmax

_MASKED_HINT = ("Fill the masked scores with -inf (or the dtype's min) before the softmax, and make a row "
                "with nothing to keep come out as zeros, not 0/0.")


def _masked_reference(x, mask, dim=-1):
    s = x.masked_fill(~mask.expand_as(x), float("-inf"))
    m = s.amax(dim=dim, keepdim=True).nan_to_num(0.0, posinf=0.0, neginf=0.0)  # 0 for fully masked rows
    e = (s - m).exp()  # exp(-inf) = 0 for masked entries
    s = e.sum(dim=dim, keepdim=True)
    return torch.where(s > 0, e / s.clamp_min(1e-300), torch.zeros_like(e))


def _masked_mistakes(x, mask, dim=-1):
    keep = mask.expand_as(x)
    return [
        (_masked_reference(x, ~keep, dim), "the mask looks inverted: it kept the masked entries and dropped the rest.",
         "True in the mask means *keep*: fill where ~mask (or mask == False)."),
        (F.softmax(x.masked_fill(keep, -1e9), dim=dim),
         "the mask looks inverted: it kept the masked entries and dropped the rest.",
         "True in the mask means *keep*: fill where ~mask (or mask == False)."),
        (F.softmax(x, dim=dim) * keep, "zeroed the masked probabilities after the softmax without renormalising: "
         "rows no longer sum to 1.", "Mask the scores *before* the softmax (or renormalise afterwards)."),
        (F.softmax(x, dim=dim), "the mask was ignored.", _MASKED_HINT),
    ]


@exercise("masked_softmax", lesson="01_softmax", forbids=FORBID_SOFTMAX + ("tantra_lib.masked_softmax",))
def check_masked_softmax(masked_softmax, hidden=False):
    expect(callable(masked_softmax), "`masked_softmax` is not a function.",
           "Define `def masked_softmax(x, mask, dim=-1):`.")
    dev = get_device()
    g = _gen(31)
    x1 = _randn(4, 6, seed=32)
    m1 = torch.rand(4, 6, generator=g) > 0.4
    m1[:, 0] = True  # every row keeps something
    m1 = m1.to(dev)
    x2 = _randn(2, 3, 5, seed=33)
    m2 = (torch.arange(5) < 3).to(dev)  # (5,) broadcast: keep the first 3 keys
    x3 = _randn(3, 4, seed=34)
    m3 = torch.tensor([[True, True, False, False], [False] * 4, [True, False, True, True]], device=dev)
    cases = [(x1, m1, "a (4, 6) x with a random mask"),
             (x2, m2, "a (2, 3, 5) x with a broadcast (5,) mask"),
             (x3, m3, "a mask with one fully masked row")]
    if hidden:
        x4 = _randn(2, 2, 7, 7, seed=35, scale=1e4)
        m4 = torch.ones(7, 7, dtype=torch.bool, device=dev).tril()
        x5 = _randn(3, 8, seed=36, dtype=torch.float64)
        m5 = torch.zeros(3, 8, dtype=torch.bool, device=dev)
        x6 = _randn(4, 9, seed=37, dtype=torch.bfloat16)
        m6 = (torch.arange(9) % 2 == 0).to(dev)
        cases += [(x4, m4, "huge logits with a causal mask"), (x5, m5, "float64 x, everything masked"),
                  (x6, m6, "bfloat16 x")]
    for x, mask, label in cases:
        out = call(masked_softmax, x, mask, name="masked_softmax")
        expected = _masked_reference(x.double(), mask).to(x.dtype)
        if isinstance(out, torch.Tensor) and out.shape == expected.shape:
            fully = ~mask.expand_as(x).any(dim=-1)
            if bool(fully.any()):
                rows = out[fully]
                expect(not bool(torch.isnan(rows).any()),
                       f"masked_softmax({label}): a fully masked row gives NaN (0/0).",
                       "When a row keeps nothing its sum is 0: divide by sum.clamp_min(tiny) or use torch.where "
                       "so the row comes out as zeros.")
                expect(bool((rows.abs() < 1e-6).all()),
                       f"masked_softmax({label}): a fully masked row should be all zeros; yours has "
                       f"values like {rows.flatten()[:3].tolist()} (a large negative fill still gives a "
                       "uniform row).",
                       "Zero the exponentials of masked entries (e.g. multiply by the mask) before dividing.")
        tol = 1e-5 if x.dtype in (torch.float32, torch.float64) else 2e-2
        compare(out, expected, what=f"masked_softmax({label})", hint=_MASKED_HINT,
                mistakes=_masked_mistakes(x.double(), mask) if x.dtype == torch.float32 else (),
                atol=tol, rtol=tol)
