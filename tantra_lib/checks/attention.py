"""Checks of lesson 02_attention: ``attention_scores``, ``causal_mask``,
``scaled_dot_product_attention``.

The expected values come from PyTorch itself (a float64 matmul for the scores,
``torch.ones(t, t).tril()`` for the mask, ``F.scaled_dot_product_attention`` and ``F.softmax``
for the attention). Before reporting "wrong values" each check tries the typical mistakes
(missing 1/√d_k, dividing by d_k, k q^T instead of q k^T, cosine similarity, upper triangle,
diagonal left out, mask inverted, softmax over the queries, ...) and names the one that
matches. Tested in tests/test_checks_attention.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..device import get_device
from ._core import Mistake, call, compare, exercise, expect
from .softmax import _masked_reference, _randn

__all__ = ["check_attention_scores", "check_causal_mask", "check_scaled_dot_product_attention"]

FORBID_ATTENTION = (
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.MultiheadAttention",
    "torch.nn.functional.multi_head_attention_forward",
    "tantra_lib.scaled_dot_product_attention",
    "tantra_lib.MultiHeadAttention",
)


def _tol(dtype):
    return {torch.float16: 2e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)


def _low(dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- attention_scores

_SCORES_HINT = "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k), with d_k = q.shape[-1] (the feature size)."


def _scores_mistakes(q, k):
    d_k, t_k = q.shape[-1], k.shape[-2]
    raw = q @ k.transpose(-2, -1)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    out = [
        (raw, "the 1/√d_k scale is missing (you returned q k^T).",
         "Divide by math.sqrt(d_k): it keeps the scores' variance near 1 whatever d_k is."),
        (raw / d_k, "divided by d_k instead of its square root √d_k.",
         "The variance of q·k grows like d_k, so its standard deviation grows like √d_k: divide by that."),
        (raw * math.sqrt(d_k), "multiplied by √d_k instead of dividing by it.", _SCORES_HINT),
        (qn @ kn.transpose(-2, -1), "computed cosine similarity (normalised q and k), not the scaled dot product.",
         "Do not normalise q and k: attention uses their raw dot product divided by √d_k."),
        ((qn @ kn.transpose(-2, -1)) / math.sqrt(d_k),
         "normalised q and k (cosine similarity) before scaling: attention uses the raw dot product.",
         _SCORES_HINT),
        (k @ q.transpose(-2, -1) / math.sqrt(d_k),
         "rows and columns are swapped: you computed k q^T (keys × queries) instead of q k^T.",
         "Row i of the result belongs to query i: q @ k.transpose(-2, -1)."),
    ]
    if q.shape[-2] == t_k:
        out.append((q.transpose(-2, -1) @ k / math.sqrt(d_k),
                    "transposed the wrong tensor/dims: q^T k is a (d_k, d_k) feature × feature matrix, "
                    "not queries × keys.",
                    "Transpose the last two dims of k: k.transpose(-2, -1) has shape (..., d_k, t_k)."))
    if t_k != d_k:
        out.append((raw / math.sqrt(t_k), "scaled by √(number of keys) instead of √d_k (the feature size).",
                    "d_k is q.shape[-1], not k.shape[-2]."))
    return out


@exercise("attention_scores", lesson="02_attention", forbids=("tantra_lib.attention_scores",) + FORBID_ATTENTION)
def check_attention_scores(attention_scores, hidden=False):
    expect(callable(attention_scores), "`attention_scores` is not a function.",
           "Define `def attention_scores(q, k):`.")
    cases = [
        (_randn(4, 16, seed=43), _randn(4, 16, seed=44), "q and k of shape (4, 16)"),
        (_randn(2, 5, 8, seed=41), _randn(2, 6, 8, seed=42), "q (2, 5, 8) and k (2, 6, 8)"),
        (_randn(2, 3, 4, 32, seed=45), _randn(2, 3, 7, 32, seed=46), "4-d q (2, 3, 4, 32), k (2, 3, 7, 32)"),
    ]
    if hidden:
        cases += [
            (_randn(3, 1, 4, seed=47), _randn(3, 1, 4, seed=48), "one query and one key"),
            (_randn(2, 5, 64, seed=49, dtype=torch.float64), _randn(2, 9, 64, seed=50, dtype=torch.float64),
             "float64 q, k"),
            (_randn(2, 6, 16, seed=51, dtype=torch.bfloat16), _randn(2, 6, 16, seed=52, dtype=torch.bfloat16),
             "bfloat16 q, k"),
            (_randn(2, 8, 5, seed=53).transpose(-2, -1), _randn(2, 8, 3, seed=54).transpose(-2, -1),
             "non-contiguous q, k"),
            (_randn(2, 4, 8, seed=55, scale=1e3), _randn(2, 4, 8, seed=56, scale=1e3), "q, k of size ~1e3"),
        ]
    for q, k, label in cases:
        try:
            out = call(attention_scores, q, k, name="attention_scores")
        except RuntimeError as e:
            if q.ndim > 2:  # the 2-d case before it worked: typically k.T / k.t() on a batched k
                raise Mistake(f"attention_scores works on 2-d q, k but fails on {label}: {e}",
                              "k.T / k.t() only transpose a matrix; for batched k use k.transpose(-2, -1) "
                              "(swap the last two dims only).") from None
            raise
        qd, kd = q.double(), k.double()
        expected = (torch.einsum("...qd,...kd->...qk", qd, kd) / math.sqrt(q.shape[-1])).to(q.dtype)
        tol = _tol(q.dtype)
        compare(out, expected, what=f"attention_scores({label})", hint=_SCORES_HINT,
                mistakes=() if _low(q.dtype) else _scores_mistakes(qd, kd), atol=tol, rtol=tol)


# ----------------------------------------------------------------------------- causal_mask

_MASK_HINT = "torch.ones(t, t, dtype=torch.bool, device=device).tril(): True on and below the diagonal."


def _mask_mistakes(t):
    ones = torch.ones(t, t, dtype=torch.bool)
    return [
        (ones.triu(), "this is the upper triangle: position i may attend to later positions j ≥ i (the future).",
         "Query i may look at keys j ≤ i: keep the lower triangle (tril)."),
        (ones.triu(1), "the mask is inverted: True marks the future positions instead of the allowed ones.",
         "True must mean *may attend*: j ≤ i."),
        (ones.tril(-1), "the diagonal is left out (strictly below the diagonal): a position cannot attend to itself "
         "and the first row is fully masked.", "Use tril() with diagonal=0 (the default): j ≤ i, not j < i."),
        (ones, "nothing is masked: every position may attend everywhere.", _MASK_HINT),
    ]


@exercise("causal_mask", lesson="02_attention", forbids=("tantra_lib.causal_mask",))
def check_causal_mask(causal_mask, hidden=False):
    expect(callable(causal_mask), "`causal_mask` is not a function.", "Define `def causal_mask(t, device=None):`.")
    dev = get_device()
    cases = [(5, None), (4, dev), (1, None)]
    if hidden:
        cases += [(9, str(dev)), (2, dev), (64, dev)]
    for t, device in cases:
        label = f"causal_mask({t}" + ("" if device is None else f", device={device!r}") + ")"
        out = causal_mask(t) if device is None else causal_mask(t, device=device)
        expected = torch.ones(t, t, dtype=torch.bool).tril().to(device or "cpu")
        expect(isinstance(out, torch.Tensor), f"{label} returned {type(out).__name__}, expected a bool tensor.",
               "Return the (t, t) tensor itself.")
        if out.dtype != torch.bool:
            vals = out.detach().double().cpu()
            if bool(torch.isinf(vals).any()):
                raise Mistake(f"{label} returned an additive float mask (0 / -inf); this course uses bool masks.",
                              "Return a bool tensor, True = may attend (masked_softmax does the -inf filling).")
            raise Mistake(f"{label} has dtype {out.dtype}; expected torch.bool (True = may attend).",
                          "Create it with dtype=torch.bool, or compare (e.g. j <= i) to get bools.")
        compare(out, expected, what=label, hint=_MASK_HINT,
                mistakes=[(m.to(expected.device), msg, h) for m, msg, h in _mask_mistakes(t)])


# ----------------------------------------------------------------------------- scaled_dot_product_attention

_SDPA_HINT = ("weights = masked_softmax(q k^T / √d_k, mask) (plain softmax when mask is None), "
              "out = weights @ v; return (out, weights).")


def _weights(scores, mask):
    return F.softmax(scores, dim=-1) if mask is None else _masked_reference(scores, mask)


def _sdpa_weight_mistakes(q, k, mask):
    d_k = q.shape[-1]
    raw = q @ k.transpose(-2, -1)
    scaled = raw / math.sqrt(d_k)
    cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    out = [
        (_weights(raw, mask), "the 1/√d_k scale is missing: the softmax is too peaked.",
         "Divide the scores by math.sqrt(d_k) before the softmax."),
        (_weights(raw / d_k, mask), "divided the scores by d_k instead of √d_k.",
         "The standard deviation of q·k grows like √d_k: divide by math.sqrt(d_k)."),
        (_weights(cos, mask), "used cosine similarity instead of the scaled dot product.",
         "Do not normalise q and k; divide q k^T by √d_k."),
        (_weights(cos / math.sqrt(d_k), mask), "used cosine similarity instead of the scaled dot product.",
         "Do not normalise q and k; divide q k^T by √d_k."),
    ]
    if mask is None:
        out.append((F.softmax(scaled, dim=-2), "the softmax runs over the queries (dim=-2), not over the keys.",
                    "Each query's weights over the keys must sum to 1: softmax along dim=-1."))
    else:
        keep = mask.expand_as(scaled)
        out += [
            (_masked_reference(scaled, ~keep), "the mask looks inverted: True must mean *may attend*.",
             "Fill the scores where ~mask (mask is False), not where mask is True."),
            (F.softmax(scaled.masked_fill(keep, -1e9), dim=-1), "the mask looks inverted: True must mean *may attend*.",
             "Fill the scores where ~mask (mask is False), not where mask is True."),
            (F.softmax(scaled, dim=-1), "the mask was ignored.", "Pass the mask to masked_softmax (True = keep)."),
            (F.softmax(scaled, dim=-1) * keep, "zeroed the masked weights after the softmax: rows no longer sum to 1.",
             "Mask the scores before the softmax."),
            (_masked_reference(scaled, keep, dim=-2), "the softmax runs over the queries (dim=-2), not over the keys.",
             "Each query's weights over the keys must sum to 1: softmax along dim=-1."),
        ]
    return out


def _expected_attention(q, k, v, mask):
    """float64 reference: F.scaled_dot_product_attention for the output where every query sees a key."""
    qd, kd, vd = q.double(), k.double(), v.double()
    scores = qd @ kd.transpose(-2, -1) / math.sqrt(q.shape[-1])
    w = _weights(scores, mask)
    if mask is None:
        out = F.scaled_dot_product_attention(qd, kd, vd)
    else:
        # PyTorch's attention gives NaN for a query that may attend nowhere; ours gives zeros.
        out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask.expand_as(scores))
        out = torch.where(mask.expand_as(scores).any(dim=-1, keepdim=True), out, torch.zeros_like(out))
    return out.to(q.dtype), w.to(q.dtype)


def _check_one_sdpa(fn, q, k, v, mask, label):
    result = call(fn, q, k, v, mask, name="scaled_dot_product_attention") if mask is not None \
        else call(fn, q, k, v, name="scaled_dot_product_attention")
    exp_out, exp_w = _expected_attention(q, k, v, mask)
    what = f"scaled_dot_product_attention({label})"
    expect(isinstance(result, tuple) and len(result) == 2,
           f"{what} returned {type(result).__name__}; expected a pair (out, weights).",
           "End with `return out, weights`.")
    out, w = result
    if isinstance(out, torch.Tensor) and isinstance(w, torch.Tensor) \
            and out.shape == exp_w.shape and w.shape == exp_out.shape and exp_w.shape != exp_out.shape:
        raise Mistake(f"{what}: the pair is in the wrong order; expected (out, weights).",
                      "Return the output first, then the attention weights.")
    if isinstance(w, torch.Tensor) and w.shape == exp_w.shape and mask is not None:
        fully = ~mask.expand_as(exp_w).any(dim=-1)
        if bool(fully.any()):
            rows = w[fully]
            expect(not bool(torch.isnan(rows).any()),
                   f"{what}: a query whose mask row is all False gives NaN weights (0/0).",
                   "Use your masked_softmax from lesson 01 (tantra_lib.masked_softmax): it returns zeros there.")
    tol = _tol(q.dtype)
    low = _low(q.dtype)
    w_mistakes = () if low else _sdpa_weight_mistakes(q.double(), k.double(), mask)
    compare(w, exp_w, what=f"the weights of {what}", hint=_SDPA_HINT, mistakes=w_mistakes, atol=tol, rtol=tol)
    if isinstance(out, torch.Tensor) and out.shape == exp_w.shape == v.shape and not low \
            and torch.allclose(out.double(), exp_w.double() @ k.double(), atol=tol, rtol=tol):
        raise Mistake(f"{what}: the output averages the keys, not the values.", "out = weights @ v.")
    compare(out, exp_out, what=f"the output of {what}", hint=_SDPA_HINT,
            mistakes=() if low else [(exp_w.double() @ v.double().transpose(-2, -1) if v.shape[-1] == v.shape[-2]
                                      else None, "multiplied by v transposed.", "out = weights @ v.")],
            atol=tol, rtol=tol)


@exercise("scaled_dot_product_attention", lesson="02_attention", forbids=FORBID_ATTENTION)
def check_scaled_dot_product_attention(scaled_dot_product_attention, hidden=False):
    fn = scaled_dot_product_attention
    expect(callable(fn), "`scaled_dot_product_attention` is not a function.",
           "Define `def scaled_dot_product_attention(q, k, v, mask=None):`.")
    dev = get_device()
    causal6 = torch.ones(6, 6, dtype=torch.bool, device=dev).tril()
    pad = torch.tensor([[True] * 7, [True] * 4 + [False] * 3], device=dev)[:, None, :]  # (B, 1, t_k)
    none_row = torch.ones(4, 5, dtype=torch.bool, device=dev)
    none_row[2] = False  # query 2 may attend nowhere
    cases = [
        (_randn(2, 5, 8, seed=61), _randn(2, 7, 8, seed=62), _randn(2, 7, 3, seed=63), None,
         "q (2, 5, 8), k (2, 7, 8), v (2, 7, 3), no mask"),
        (_randn(2, 6, 16, seed=64), _randn(2, 6, 16, seed=65), _randn(2, 6, 16, seed=66), causal6,
         "a causal (6, 6) mask"),
        (_randn(2, 3, 16, seed=67), _randn(2, 7, 16, seed=68), _randn(2, 7, 5, seed=69), pad,
         "a padding mask of shape (2, 1, 7)"),
        (_randn(4, 12, seed=70), _randn(5, 12, seed=71), _randn(5, 12, seed=72), none_row,
         "a mask with one query that may attend nowhere"),
    ]
    if hidden:
        causal5 = torch.ones(5, 5, dtype=torch.bool, device=dev).tril()
        cases += [
            (_randn(2, 3, 5, 8, seed=73), _randn(2, 3, 5, 8, seed=74), _randn(2, 3, 5, 4, seed=75),
             causal5[None, None], "4-d (batch, heads, t, d) inputs with a (1, 1, 5, 5) mask"),
            (_randn(3, 1, 8, seed=76), _randn(3, 1, 8, seed=77), _randn(3, 1, 2, seed=78), None, "t = 1"),
            (_randn(2, 4, 32, seed=79, dtype=torch.float64), _randn(2, 6, 32, seed=80, dtype=torch.float64),
             _randn(2, 6, 7, seed=81, dtype=torch.float64), (torch.arange(6, device=dev) < 4),
             "float64 and a (6,) mask"),
            (_randn(2, 5, 16, seed=82, dtype=torch.bfloat16), _randn(2, 5, 16, seed=83, dtype=torch.bfloat16),
             _randn(2, 5, 16, seed=84, dtype=torch.bfloat16), causal5, "bfloat16"),
            (_randn(2, 5, 16, seed=85, dtype=torch.float16), _randn(2, 5, 16, seed=86, dtype=torch.float16),
             _randn(2, 5, 16, seed=87, dtype=torch.float16), None, "float16"),
            (_randn(2, 8, 5, seed=88).transpose(-2, -1), _randn(2, 8, 5, seed=89).transpose(-2, -1),
             _randn(2, 3, 5, seed=90).transpose(-2, -1), None, "non-contiguous inputs"),
            (_randn(2, 5, 8, seed=91, scale=100), _randn(2, 5, 8, seed=92, scale=100), _randn(2, 5, 4, seed=93),
             causal5, "huge scores (a saturated softmax)"),
            (_randn(3, 4, 8, seed=94), _randn(3, 4, 8, seed=95), _randn(3, 4, 8, seed=96),
             torch.zeros(4, 4, dtype=torch.bool, device=dev), "an all-False mask"),
        ]
    for q, k, v, mask, label in cases:
        _check_one_sdpa(fn, q, k, v, mask, label)
    q = _randn(2, 4, 8, seed=97).requires_grad_()
    out, _ = fn(q, _randn(2, 4, 8, seed=98), _randn(2, 4, 8, seed=99))
    expect(out.requires_grad, "the output does not carry gradients.",
           "Stay in torch operations (no .detach(), .numpy() or torch.tensor(...)).")
