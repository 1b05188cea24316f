"""Tests of the lesson 03 checks (tantra_lib/checks/multi_head.py): plausible wrong
implementations are rejected naming the mistake, alternative correct ones pass the hidden cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tantra_lib import masked_softmax, merge_heads, scaled_dot_product_attention, softmax, split_heads
from tantra_lib.checks import outcome
from tantra_lib.checks.multi_head import check_merge_heads, check_MultiHeadAttention, check_split_heads

# ----------------------------------------------------------------------------- split_heads


def split_no_transpose(x, n_heads):
    *lead, t, c = x.shape
    return x.reshape(*lead, n_heads, t, c // n_heads)


def split_strided(x, n_heads):
    *lead, t, c = x.shape
    return x.reshape(*lead, t, c // n_heads, n_heads).movedim(-1, -3)


def split_forgot_transpose(x, n_heads):
    *lead, t, c = x.shape
    return x.reshape(*lead, t, n_heads, c // n_heads)


def split_swapped_last(x, n_heads):
    *lead, t, c = x.shape
    return x.reshape(*lead, t, n_heads, c // n_heads).permute(*range(len(lead)), -2, -1, -3)


def split_shortcut(x, n_heads):
    return split_heads(x, n_heads)


def split_todo(x, n_heads):
    raise NotImplementedError()


def split_unflatten(x, n_heads):
    return x.unflatten(-1, (n_heads, -1)).transpose(-3, -2)


def split_stack(x, n_heads):
    """One slice of features per head, stacked on a new axis before T."""
    d = x.shape[-1] // n_heads
    return torch.stack([x[..., i * d:(i + 1) * d] for i in range(n_heads)], dim=-3)


@pytest.mark.parametrize("impl, keyword", [
    (split_no_transpose, "reshape without transpose"),
    (split_strided, "every n_heads-th feature"),
    (split_forgot_transpose, "not moved in front"),
    (split_swapped_last, "positions and features are swapped"),
])
def test_split_heads_rejects_mistake(device, impl, keyword):
    r = outcome(check_split_heads, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_split_heads_shortcut():
    assert outcome(check_split_heads, split_shortcut).status == "shortcut"


def test_split_heads_not_attempted():
    assert outcome(check_split_heads, split_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [split_unflatten, split_stack])
def test_split_heads_accepts_correct(device, impl):
    assert outcome(check_split_heads, impl, hidden=True).passed


# ----------------------------------------------------------------------------- merge_heads


def merge_no_transpose(x):
    *lead, h, t, d = x.shape
    return x.reshape(*lead, t, h * d)


def merge_wrong_order(x):
    *lead, h, t, d = x.shape
    return x.movedim(-3, -1).reshape(*lead, t, h * d)


def merge_not_flattened(x):
    return x.transpose(-3, -2)


def merge_summed(x):
    return x.sum(dim=-3)


def merge_view(x):
    *lead, h, t, d = x.shape
    return x.transpose(-3, -2).view(*lead, t, h * d)


def merge_shortcut(x):
    return merge_heads(x)


def merge_todo(x):
    raise NotImplementedError


def merge_cat(x):
    return torch.cat(x.unbind(dim=-3), dim=-1)


def merge_einops_like(x):
    return x.movedim(-3, -2).flatten(-2)


@pytest.mark.parametrize("impl, keyword", [
    (merge_no_transpose, "reshape without transpose"),
    (merge_wrong_order, "wrong order"),
    (merge_not_flattened, "not merged"),
    (merge_summed, "summed"),
    (merge_view, ".view()"),
])
def test_merge_heads_rejects_mistake(device, impl, keyword):
    r = outcome(check_merge_heads, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_merge_heads_shortcut():
    assert outcome(check_merge_heads, merge_shortcut).status == "shortcut"


def test_merge_heads_not_attempted():
    assert outcome(check_merge_heads, merge_todo).status == "not_attempted"


@pytest.mark.parametrize("impl", [merge_cat, merge_einops_like])
def test_merge_heads_accepts_correct(device, impl):
    assert outcome(check_merge_heads, impl, hidden=True).passed


# ----------------------------------------------------------------------------- MultiHeadAttention


class MHABase(nn.Module):
    """A learner-style multi-head attention; the subclasses below each change one thing."""

    order = "qkv"

    def __init__(self, d_model, n_heads, bias=True):
        super().__init__()
        self.n_heads = n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def heads(self, x):
        chunks = dict(zip(self.order, self.qkv_proj(x).chunk(3, dim=-1)))
        return (split_heads(chunks[n], self.n_heads) for n in "qkv")

    def attend(self, q, k, v, mask):
        return scaled_dot_product_attention(q, k, v, mask)[0]

    def forward(self, x, mask=None):
        q, k, v = self.heads(x)
        return self.out_proj(merge_heads(self.attend(q, k, v, mask)))


class MHAWrongOrder(MHABase):
    order = "kqv"


class MHAModelScale(MHABase):
    def attend(self, q, k, v, mask):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1] * self.n_heads)
        return (softmax(s) if mask is None else masked_softmax(s, mask)) @ v


class MHANoOutProj(MHABase):
    def forward(self, x, mask=None):
        q, k, v = self.heads(x)
        return merge_heads(self.attend(q, k, v, mask))


class MHAMergeNoTranspose(MHABase):
    def forward(self, x, mask=None):
        q, k, v = self.heads(x)
        o = self.attend(q, k, v, mask)
        return self.out_proj(o.reshape(x.shape))


class MHAMaskInverted(MHABase):
    def attend(self, q, k, v, mask):
        return super().attend(q, k, v, None if mask is None else ~mask)


class MHASplitNoTranspose(MHABase):
    def heads(self, x):
        b, t, c = x.shape
        return (z.reshape(b, self.n_heads, t, c // self.n_heads) for z in self.qkv_proj(x).chunk(3, dim=-1))


class MHAExtraLayer(MHABase):
    def __init__(self, d_model, n_heads, bias=True):
        super().__init__(d_model, n_heads, bias)
        self.extra = nn.Linear(d_model, d_model)


class MHAShortcut(nn.Module):
    def __init__(self, d_model, n_heads, bias=True):
        super().__init__()
        self.inner = nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True)
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, mask=None):
        return self.inner(x, x, x, need_weights=False)[0]


class MHATodo(nn.Module):
    def __init__(self, d_model, n_heads, bias=True):
        super().__init__()
        raise NotImplementedError()


class MHALoop(nn.Module):
    """One head at a time with slices of q, k, v, concatenated at the end."""

    def __init__(self, d_model, n_heads, bias=True):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, mask=None):
        q, k, v = self.qkv_proj(x).split(x.shape[-1], dim=-1)
        outs = []
        for h in range(self.n_heads):
            sl = slice(h * self.d_head, (h + 1) * self.d_head)
            m = None if mask is None else mask.select(-3, 0) if mask.dim() == 4 else mask
            outs.append(scaled_dot_product_attention(q[..., sl], k[..., sl], v[..., sl], m)[0])
        return self.out_proj(torch.cat(outs, dim=-1))


class MHATorchSDPA(nn.Module):
    """Fused heads with PyTorch's F.scaled_dot_product_attention (allowed here) and einsum projections."""

    def __init__(self, d_model, n_heads, bias=True):
        super().__init__()
        self.n_heads = n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, mask=None):
        b, t, c = x.shape
        qkv = self.qkv_proj(x).view(b, t, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)  # (3,B,H,T,D)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("impl, keyword", [
    (MHAWrongOrder, "wrong chunks"),
    (MHAModelScale, "d_model instead of"),
    (MHANoOutProj, "out_proj is not applied"),
    (MHAMergeNoTranspose, "merge_heads: reshape without transpose"),
    (MHAMaskInverted, "inverted"),
    (MHASplitNoTranspose, "reshape without transpose"),
    (MHAExtraLayer, "parameters"),
])
def test_mha_rejects_mistake(device, impl, keyword):
    r = outcome(check_MultiHeadAttention, impl)
    assert r.status == "failed" and keyword in r.message, r.line()


def test_mha_shortcut():
    assert outcome(check_MultiHeadAttention, MHAShortcut).status == "shortcut"


def test_mha_not_attempted():
    assert outcome(check_MultiHeadAttention, MHATodo).status == "not_attempted"


@pytest.mark.parametrize("impl", [MHABase, MHALoop, MHATorchSDPA])
def test_mha_accepts_correct(device, impl):
    assert outcome(check_MultiHeadAttention, impl, hidden=True).passed


def test_mha_check_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    outcome(check_MultiHeadAttention, MHABase)
    assert torch.equal(torch.get_rng_state(), before)
