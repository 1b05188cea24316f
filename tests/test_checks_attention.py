"""Tests of the lesson 02 checks (tantra_lib/checks/attention.py): plausible wrong
implementations are rejected naming the mistake, alternative correct ones pass the hidden cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tantra_lib import masked_softmax, softmax
from tantra_lib.checks import outcome
from tantra_lib.checks.attention import (
    check_attention_scores,
    check_causal_mask,
    check_scaled_dot_product_attention,
)

# ----------------------------------------------------------------------------- attention_scores


def scores_no_scale(q, k):
    return q @ k.transpose(-2, -1)


def scores_by_d_k(q, k):
    return q @ k.transpose(-2, -1) / q.shape[-1]


def scores_k_q(q, k):
    return k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])


def scores_wrong_transpose(q, k):
    return q.transpose(-2, -1) @ k / math.sqrt(q.shape[-1])


def scores_matrix_t(q, k):
    kt = k.t() if k.ndim == 2 else k.permute(*range(k.ndim - 1, -1, -1))  # k.T: reverses every dim
    return q @ kt / math.sqrt(q.shape[-1])


def scores_cosine(q, k):
    return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)


def scores_by_t(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(k.shape[-2])


def scores_shortcut(q, k):
    import tantra_lib

    return tantra_lib.attention_scores(q, k)


def scores_todo(q, k):
    raise NotImplementedError()


def scores_einsum(q, k):
    return torch.einsum("...id,...jd->...ij", q, k) * q.shape[-1] ** -0.5


def scores_prescaled(q, k):
    """Scale q and k by d_k^(-1/4) each before the product (as some codebases do)."""
    s = q.shape[-1] ** -0.25
    return torch.matmul(q * s, (k * s).transpose(-1, -2))


@pytest.mark.parametrize("impl, keyword", [
    (scores_no_scale, "scale is missing"),
    (scores_by_d_k, "instead of its square root"),
    (scores_k_q, "swapped"),
    (scores_wrong_transpose, "transposed the wrong"),
    (scores_cosine, "cosine"),
    (scores_by_t, "number of keys"),
    (scores_matrix_t, "fails on"),
])
def test_attention_scores_rejects_mistake(device, impl, keyword):
    r = outcome(check_attention_scores, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_attention_scores_shortcut():
    assert outcome(check_attention_scores, scores_shortcut).status == "shortcut"


def test_attention_scores_not_attempted():
    assert outcome(check_attention_scores, scores_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [scores_einsum, scores_prescaled])
def test_attention_scores_accepts_correct(device, impl):
    assert outcome(check_attention_scores, impl, hidden=True).passed


# ----------------------------------------------------------------------------- causal_mask


def mask_upper(t, device=None):
    return torch.ones(t, t, dtype=torch.bool, device=device).triu()


def mask_strict(t, device=None):
    return torch.ones(t, t, dtype=torch.bool, device=device).tril(-1)


def mask_inverted(t, device=None):
    return torch.ones(t, t, dtype=torch.bool, device=device).triu(1)


def mask_float(t, device=None):
    return torch.ones(t, t, device=device).tril()


def mask_additive(t, device=None):
    return torch.full((t, t), float("-inf"), device=device).triu(1)


def mask_all_true(t, device=None):
    return torch.ones(t, t, dtype=torch.bool, device=device)


def mask_shortcut(t, device=None):
    import tantra_lib

    return tantra_lib.causal_mask(t, device)


def mask_todo(t, device=None):
    raise NotImplementedError


def mask_compare(t, device=None):
    i = torch.arange(t, device=device)
    return i[None, :] <= i[:, None]  # key j allowed for query i when j <= i


def mask_loops(t, device=None):
    m = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(i + 1):
            m[i, j] = True
    return m.to(device) if device is not None else m


@pytest.mark.parametrize("impl, keyword", [
    (mask_upper, "upper triangle"),
    (mask_strict, "diagonal is left out"),
    (mask_inverted, "inverted"),
    (mask_float, "dtype"),
    (mask_additive, "additive"),
    (mask_all_true, "nothing is masked"),
])
def test_causal_mask_rejects_mistake(device, impl, keyword):
    r = outcome(check_causal_mask, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_causal_mask_shortcut():
    assert outcome(check_causal_mask, mask_shortcut).status == "shortcut"


def test_causal_mask_not_attempted():
    assert outcome(check_causal_mask, mask_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [mask_compare, mask_loops])
def test_causal_mask_accepts_correct(device, impl):
    assert outcome(check_causal_mask, impl, hidden=True).passed


# ----------------------------------------------------------------------------- scaled_dot_product_attention


def _attend(scores, v, mask):
    w = softmax(scores) if mask is None else masked_softmax(scores, mask)
    return w @ v, w


def sdpa_no_scale(q, k, v, mask=None):
    return _attend(q @ k.transpose(-2, -1), v, mask)


def sdpa_by_d_k(q, k, v, mask=None):
    return _attend(q @ k.transpose(-2, -1) / q.shape[-1], v, mask)


def sdpa_inverted(q, k, v, mask=None):
    return _attend(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), v, None if mask is None else ~mask)


def sdpa_nan_rows(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = softmax(s)
    return w @ v, w


def sdpa_wrong_axis(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    w = softmax(s, dim=-2) if mask is None else masked_softmax(s, mask, dim=-2)
    return w @ v, w


def sdpa_ignores_mask(q, k, v, mask=None):
    return _attend(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), v, None)


def sdpa_cosine(q, k, v, mask=None):
    return _attend(F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1), v, mask)


def sdpa_swapped_return(q, k, v, mask=None):
    out, w = _attend(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), v, mask)
    return w, out


def sdpa_shortcut(q, k, v, mask=None):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out, out


def sdpa_todo(q, k, v, mask=None):
    raise NotImplementedError()


def sdpa_einsum(q, k, v, mask=None):
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    qf, kf, vf = q.to(work), k.to(work), v.to(work)
    s = torch.einsum("...id,...jd->...ij", qf, kf) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    s = s - s.amax(dim=-1, keepdim=True).nan_to_num(0.0, neginf=0.0)
    e = s.exp()
    w = torch.nan_to_num(e / e.sum(dim=-1, keepdim=True), nan=0.0)
    return torch.einsum("...ij,...jd->...id", w, vf).to(q.dtype), w.to(q.dtype)


def sdpa_per_query(q, k, v, mask=None):
    """One query at a time, with the library's masked_softmax."""
    d = q.shape[-1]
    outs, ws = [], []
    full = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device) if mask is None else mask
    full = full.expand(*q.shape[:-1], k.shape[-2])
    for i in range(q.shape[-2]):
        s = (q[..., i:i + 1, :] @ k.transpose(-2, -1)) / d ** 0.5  # (..., 1, t_k)
        w = masked_softmax(s, full[..., i:i + 1, :])
        ws.append(w)
        outs.append(w @ v)
    return torch.cat(outs, dim=-2), torch.cat(ws, dim=-2)


@pytest.mark.parametrize("impl, keyword", [
    (sdpa_no_scale, "scale is missing"),
    (sdpa_by_d_k, "instead of √d_k"),
    (sdpa_inverted, "inverted"),
    (sdpa_nan_rows, "NaN"),
    (sdpa_wrong_axis, "over the queries"),
    (sdpa_ignores_mask, "ignored"),
    (sdpa_cosine, "cosine"),
    (sdpa_swapped_return, "wrong order"),
])
def test_sdpa_rejects_mistake(device, impl, keyword):
    r = outcome(check_scaled_dot_product_attention, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_sdpa_shortcut():
    assert outcome(check_scaled_dot_product_attention, sdpa_shortcut).status == "shortcut"


def test_sdpa_not_attempted():
    assert outcome(check_scaled_dot_product_attention, sdpa_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [sdpa_einsum, sdpa_per_query])
def test_sdpa_accepts_correct(device, impl):
    assert outcome(check_scaled_dot_product_attention, impl, hidden=True).passed
