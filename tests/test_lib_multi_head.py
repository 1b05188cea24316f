"""tantra_lib.multi_head against nn.MultiheadAttention (batch_first, weights copied in).

nn.MultiheadAttention's bool masks mean the opposite of ours (True = may NOT attend), so
the tests pass it the negation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tantra_lib import MultiHeadAttention, causal_mask, merge_heads, split_heads

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def randn(*shape, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def twins(d_model, n_heads, device, dtype=torch.float32, bias=True, seed=0):
    """Our MultiHeadAttention and an nn.MultiheadAttention holding the same weights."""
    torch.manual_seed(seed)
    theirs = nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True)
    if bias:  # torch initialises the biases to zero; make them matter
        nn.init.normal_(theirs.in_proj_bias)
        nn.init.normal_(theirs.out_proj.bias)
    theirs = theirs.to(device=device, dtype=dtype)
    ours = MultiHeadAttention(d_model, n_heads, bias=bias).to(device=device, dtype=dtype)
    with torch.no_grad():
        ours.qkv_proj.weight.copy_(theirs.in_proj_weight)  # rows [q; k; v] in both
        ours.out_proj.weight.copy_(theirs.out_proj.weight)
        if bias:
            ours.qkv_proj.bias.copy_(theirs.in_proj_bias)
            ours.out_proj.bias.copy_(theirs.out_proj.bias)
    return ours, theirs


# ---- split_heads / merge_heads -------------------------------------------------------------


@pytest.mark.parametrize("shape,n_heads", [((2, 5, 12), 3), ((7, 8), 2), ((2, 3, 4, 6), 6), ((1, 1, 4), 1)])
def test_split_and_merge_heads(device, shape, n_heads):
    x = randn(*shape, device=device)
    *lead, t, d_model = shape
    d_head = d_model // n_heads
    s = split_heads(x, n_heads)
    assert s.shape == (*lead, n_heads, t, d_head)
    for h in range(n_heads):  # head h holds features h*d_head .. (h+1)*d_head - 1 of every position
        assert torch.equal(s[..., h, :, :], x[..., h * d_head : (h + 1) * d_head])
    assert torch.equal(merge_heads(s), x)
    assert torch.equal(split_heads(merge_heads(s), n_heads), s)


def test_split_heads_of_non_contiguous_input(device):
    x = randn(6, 2, 8, device=device).transpose(0, 1)  # (2, 6, 8), strided
    assert not x.is_contiguous()
    assert torch.equal(split_heads(x, 4), x.contiguous().view(2, 6, 4, 2).permute(0, 2, 1, 3))
    assert torch.equal(merge_heads(split_heads(x, 4)), x)


def test_split_heads_rejects_indivisible_d_model(device):
    with pytest.raises(ValueError, match="divisible"):
        split_heads(torch.zeros(2, 3, 10, device=device), 4)


def test_split_merge_gradcheck(device):
    x = randn(2, 3, 6, device=device, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: split_heads(t, 3), (x,))
    s = randn(2, 3, 4, 2, device=device, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(merge_heads, (s,))


# ---- MultiHeadAttention ------------------------------------------------------------------


def test_parameters_follow_the_contract():
    mha = MultiHeadAttention(12, 3)
    assert isinstance(mha.qkv_proj, nn.Linear) and isinstance(mha.out_proj, nn.Linear)
    assert mha.qkv_proj.weight.shape == (36, 12) and mha.qkv_proj.bias.shape == (36,)
    assert mha.out_proj.weight.shape == (12, 12)
    assert {n for n, _ in mha.named_parameters()} == {
        "qkv_proj.weight", "qkv_proj.bias", "out_proj.weight", "out_proj.bias"
    }
    no_bias = MultiHeadAttention(12, 3, bias=False)
    assert no_bias.qkv_proj.bias is None and no_bias.out_proj.bias is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,t,d_model,n_heads", [(2, 5, 16, 4), (3, 1, 8, 2), (1, 7, 12, 3), (2, 4, 8, 1)])
def test_mha_matches_torch(device, dtype, b, t, d_model, n_heads):
    ours, theirs = twins(d_model, n_heads, device, dtype, seed=t)
    x = randn(b, t, d_model, device=device, dtype=dtype, seed=1)
    out, w = ours(x, return_weights=True)
    ref, ref_w = theirs(x, x, x, need_weights=True, average_attn_weights=False)
    assert out.shape == (b, t, d_model) and w.shape == (b, n_heads, t, t)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(w, ref_w, **TOL[dtype])
    _, ref_avg = theirs(x, x, x, need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(w.mean(dim=1), ref_avg, **TOL[dtype])
    torch.testing.assert_close(ours(x), ref, **TOL[dtype])  # without return_weights: the output alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mha_causal_mask_matches_torch(device, dtype):
    ours, theirs = twins(16, 4, device, dtype, seed=3)
    x = randn(2, 6, 16, device=device, dtype=dtype, seed=2)
    mask = causal_mask(6, device=device)
    out, w = ours(x, mask=mask, return_weights=True)
    ref, ref_w = theirs(x, x, x, attn_mask=~mask, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    torch.testing.assert_close(w, ref_w, **TOL[dtype])
    # causality: changing the last token changes nothing before it
    x2 = x.clone()
    x2[:, -1] += 1.0
    torch.testing.assert_close(ours(x2, mask=mask)[:, :-1], out[:, :-1], **TOL[dtype])


def test_mha_broadcast_padding_mask_matches_key_padding_mask(device):
    ours, theirs = twins(8, 2, device, seed=4)
    x = randn(3, 5, 8, device=device, seed=3)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool, device=device)
    out, w = ours(x, mask=keep[:, None, None, :], return_weights=True)  # (B, 1, 1, T) broadcasts
    ref, ref_w = theirs(x, x, x, key_padding_mask=~keep, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    torch.testing.assert_close(w, ref_w, **TOL[torch.float32])


def test_mha_without_bias_matches_torch(device):
    ours, theirs = twins(12, 3, device, bias=False, seed=5)
    x = randn(2, 4, 12, device=device, seed=4)
    torch.testing.assert_close(ours(x), theirs(x, x, x, need_weights=False)[0], **TOL[torch.float32])


def test_mha_non_contiguous_input(device):
    ours, theirs = twins(8, 2, device, seed=6)
    x = randn(5, 2, 8, device=device, seed=5).transpose(0, 1)  # (2, 5, 8), strided
    assert not x.is_contiguous()
    ref = theirs(x.contiguous(), x.contiguous(), x.contiguous(), need_weights=False)[0]
    torch.testing.assert_close(ours(x), ref, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mha_low_precision(device, dtype):
    ours, theirs = twins(16, 4, device, seed=7)
    x = randn(2, 5, 16, device=device, seed=6)
    out = ours.to(dtype)(x.to(dtype), mask=causal_mask(5, device=device))
    assert out.dtype == dtype
    ref = theirs(x, x, x, attn_mask=~causal_mask(5, device=device), need_weights=False)[0]
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mha_paths_with_and_without_weights_agree(device, dtype):
    """Without return_weights the module may hand attention to a fused kernel; with it, it runs
    the reference math. Same output either way, fully masked queries included."""
    ours, _ = twins(8, 2, device, dtype, seed=10)
    x = randn(3, 4, 8, device=device, dtype=dtype, seed=8)
    padding = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    masks = [None, causal_mask(4, device=device), padding]
    masks[-1][0, 0, 1] = False  # query 1 of batch 0 may attend nowhere: its attention output is 0
    for mask in masks:
        mask = None if mask is None else mask.to(device)
        fused = ours(x, mask=mask)
        ref, _ = ours(x, mask=mask, return_weights=True)
        assert not torch.isnan(fused).any()
        torch.testing.assert_close(fused, ref, **TOL[dtype])
    torch.testing.assert_close(ref[0, 1], ours.out_proj.bias, **TOL[dtype])


def test_mha_bad_inputs(device):
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
    mha = MultiHeadAttention(8, 2).to(device)
    with pytest.raises(ValueError, match="d_model"):
        mha(torch.zeros(2, 3, 6, device=device))
    x, float_mask = torch.zeros(2, 3, 8, device=device), torch.zeros(3, 3, device=device)
    for return_weights in (False, True):
        with pytest.raises(TypeError, match="bool"):
            mha(x, mask=float_mask, return_weights=return_weights)


def test_mha_gradcheck(device):
    ours, _ = twins(4, 2, device, dtype=torch.float64, seed=8)
    x = randn(2, 3, 4, device=device, dtype=torch.float64, seed=7).requires_grad_()
    mask = causal_mask(3, device=device)
    assert torch.autograd.gradcheck(lambda t: ours(t, mask=mask), (x,))
    assert torch.autograd.gradcheck(lambda t: ours(t, mask=mask, return_weights=True)[0], (x,))
    x = randn(2, 3, 8, device=device, dtype=torch.float64, seed=7).requires_grad_()
    # gradients reach every parameter, and equal nn.MultiheadAttention's for the same loss
    ours, theirs = twins(8, 2, device, dtype=torch.float64, seed=9)
    (ours(x, mask=mask) ** 2).sum().backward()
    (theirs(x, x, x, attn_mask=~mask, need_weights=False)[0] ** 2).sum().backward()
    torch.testing.assert_close(ours.qkv_proj.weight.grad, theirs.in_proj_weight.grad, **TOL[torch.float64])
    torch.testing.assert_close(ours.out_proj.weight.grad, theirs.out_proj.weight.grad, **TOL[torch.float64])
