"""tantra_lib.attention against F.scaled_dot_product_attention (its bool attn_mask is also
True = may attend), with bool and causal masks and the edge cases issue 3 lists."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tantra_lib import attention_scores, causal_mask, scaled_dot_product_attention

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def randn(*shape, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def torch_weights(q, k, mask=None, is_causal=False):
    """PyTorch's own attention weights: F.scaled_dot_product_attention with v = identity."""
    eye = torch.eye(k.shape[-2], dtype=q.dtype, device=q.device).expand(*k.shape[:-2], -1, -1)
    return F.scaled_dot_product_attention(q, k, eye, attn_mask=mask, is_causal=is_causal)


# (leading dims, t_q, t_k, d_k, d_v)
CASES = [((), 5, 5, 8, 8), ((2,), 4, 7, 16, 3), ((2, 3), 6, 6, 4, 10), ((3,), 1, 1, 8, 8), ((1, 2), 1, 9, 5, 5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead,t_q,t_k,d_k,d_v", CASES)
def test_sdpa_matches_torch_without_mask(device, dtype, lead, t_q, t_k, d_k, d_v):
    q = randn(*lead, t_q, d_k, device=device, dtype=dtype, seed=1)
    k = randn(*lead, t_k, d_k, device=device, dtype=dtype, seed=2)
    v = randn(*lead, t_k, d_v, device=device, dtype=dtype, seed=3)
    out, w = scaled_dot_product_attention(q, k, v)
    assert out.shape == (*lead, t_q, d_v) and w.shape == (*lead, t_q, t_k)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
    torch.testing.assert_close(w, torch_weights(q, k), **TOL[dtype])
    torch.testing.assert_close(attention_scores(q, k), q @ k.transpose(-2, -1) / math.sqrt(d_k), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "lead,mask_shape",
    [((2, 3), (2, 3, 6, 7)), ((2, 3), (7,)), ((2, 3), (3, 6, 7)), ((2, 3), (2, 1, 1, 7)), ((4,), (4, 6, 7))],
)
def test_sdpa_matches_torch_with_bool_masks(device, dtype, lead, mask_shape):
    q = randn(*lead, 6, 8, device=device, dtype=dtype, seed=4)
    k = randn(*lead, 7, 8, device=device, dtype=dtype, seed=5)
    v = randn(*lead, 7, 5, device=device, dtype=dtype, seed=6)
    g = torch.Generator().manual_seed(7)
    mask = (torch.rand(*mask_shape, generator=g) < 0.5).to(device)
    mask[..., 0] = True  # every query may attend somewhere (fully masked rows: below)
    out, w = scaled_dot_product_attention(q, k, v, mask)
    full = mask.expand(*lead, 6, 7)  # F.scaled_dot_product_attention wants a mask of >= 2 dims
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=full), **TOL[dtype])
    torch.testing.assert_close(w, torch_weights(q, k, full), **TOL[dtype])
    assert (w.masked_select(~full) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [1, 2, 9])
def test_sdpa_causal_matches_torch_is_causal(device, dtype, t):
    q, k, v = (randn(2, 3, t, 8, device=device, dtype=dtype, seed=s) for s in (8, 9, 10))
    out, w = scaled_dot_product_attention(q, k, v, causal_mask(t, device=device))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL[dtype])
    torch.testing.assert_close(w, torch_weights(q, k, is_causal=True), **TOL[dtype])
    assert (w.triu(1) == 0).all()
    # the first query can only see the first key
    torch.testing.assert_close(out[..., 0, :], v[..., 0, :], **TOL[dtype])


def test_causal_mask(device):
    m = causal_mask(4, device=device)
    assert m.dtype == torch.bool and m.shape == (4, 4) and m.device.type == device.type
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m.cpu(), expected)
    assert torch.equal(causal_mask(1), torch.ones(1, 1, dtype=torch.bool))
    assert causal_mask(3).device.type == "cpu"


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "3"])
def test_causal_mask_rejects_bad_t(bad):
    with pytest.raises(ValueError, match="positive int"):
        causal_mask(bad)


def test_fully_masked_query_gets_zero_weights_and_output(device):
    q, k, v = (randn(2, 4, 6, device=device, seed=s) for s in (11, 12, 13))
    mask = torch.ones(4, 4, dtype=torch.bool, device=device)
    mask[2] = False
    out, w = scaled_dot_product_attention(q, k, v, mask)
    assert not torch.isnan(out).any() and not torch.isnan(w).any()
    assert (w[:, 2] == 0).all() and (out[:, 2] == 0).all()
    torch.testing.assert_close(out[:, [0, 1, 3]], F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[:, [0, 1, 3]])


def test_huge_scores_stay_finite(device):
    q = randn(1, 3, 4, device=device, seed=14) * 1e3
    k = randn(1, 5, 4, device=device, seed=15) * 1e3
    v = randn(1, 5, 2, device=device, seed=16)
    out, w = scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs(device):
    base = randn(2, 8, 3, 12, device=device, seed=17)  # (B, T, H, 3*D): heads not leading
    q, k, v = (base[..., i * 4 : (i + 1) * 4].transpose(1, 2) for i in range(3))  # (B, H, T, D) views
    assert not q.is_contiguous()
    mask = causal_mask(8, device=device)
    out, w = scaled_dot_product_attention(q, k, v, mask)
    qc, kc, vc = (t.contiguous() for t in (q, k, v))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask), **TOL[torch.float32])
    torch.testing.assert_close(w, torch_weights(qc, kc, mask), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(device, dtype):
    q, k, v = (randn(2, 2, 5, 8, device=device, seed=s) for s in (18, 19, 20))
    mask = causal_mask(5, device=device)
    out, w = scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    assert out.dtype == dtype and w.dtype == dtype
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(w.float(), torch_weights(q, k, mask), rtol=3e-2, atol=3e-2)


def test_inputs_are_not_modified(device):
    q, k, v = (randn(2, 4, 3, device=device, seed=s) for s in (21, 22, 23))
    copies = [t.clone() for t in (q, k, v)]
    scaled_dot_product_attention(q, k, v, causal_mask(4, device=device))
    for t, c in zip((q, k, v), copies):
        torch.testing.assert_close(t, c, rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors(device):
    q, k, v = (torch.zeros(*s, device=device) for s in ((2, 3, 4), (2, 5, 4), (2, 5, 6)))
    with pytest.raises(ValueError, match="d_k"):
        attention_scores(q, torch.zeros(2, 5, 3, device=device))
    with pytest.raises(ValueError, match="d_k"):
        scaled_dot_product_attention(q, torch.zeros(2, 5, 3, device=device), v)
    with pytest.raises(ValueError, match="same number of positions"):
        scaled_dot_product_attention(q, k, torch.zeros(2, 4, 6, device=device))
    with pytest.raises(TypeError, match="bool"):  # an additive float mask is not accepted
        scaled_dot_product_attention(q, k, v, torch.zeros(3, 5, device=device))


def test_gradcheck(device):
    q = randn(2, 3, 4, device=device, dtype=torch.float64, seed=24).requires_grad_()
    k = randn(2, 5, 4, device=device, dtype=torch.float64, seed=25).requires_grad_()
    v = randn(2, 5, 3, device=device, dtype=torch.float64, seed=26).requires_grad_()
    mask = torch.tensor([[True, True, False, True, False], [False] * 5, [True] * 5], device=device)
    assert torch.autograd.gradcheck(attention_scores, (q, k))
    assert torch.autograd.gradcheck(lambda *a: scaled_dot_product_attention(*a), (q, k, v))
    assert torch.autograd.gradcheck(lambda *a: scaled_dot_product_attention(*a, mask), (q, k, v))
    # and the gradients equal PyTorch's own
    w = randn(2, 3, 3, device=device, dtype=torch.float64, seed=27)
    ours = torch.autograd.grad((scaled_dot_product_attention(q, k, v)[0] * w).sum(), (q, k, v))
    theirs = torch.autograd.grad((F.scaled_dot_product_attention(q, k, v) * w).sum(), (q, k, v))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
