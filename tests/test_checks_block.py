"""Tests of the lesson-07 check (tantra_lib/checks/block.py): wrong blocks are rejected with a
message naming the mistake, shortcuts and stubs are recognised, and alternative correct
blocks pass the hidden cases too (both norm placements, masks, dtypes).

The implementations below stand for learner code; they live at module level on purpose.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tantra_lib
from tantra_lib import FeedForward, LayerNorm, MultiHeadAttention
from tantra_lib.checks import CheckFailed
from tantra_lib.checks.block import check_TransformerBlock

# ----------------------------------------------------------------------------- right


class BlockFromLib(nn.Module):
    """The lesson's way: tantra_lib's pieces, residuals and norms written out."""

    def __init__(self, d_model, n_heads, d_ff, norm_first=True, dropout=0.0):
        super().__init__()
        self.norm_first = norm_first
        self.ln1 = LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ln2 = LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff)

    def forward(self, x, mask=None):
        if self.norm_first:
            x = x + self.attn(self.ln1(x), mask=mask)
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask=mask))
        return self.ln2(x + self.ffn(x))


class SdpaAttention(nn.Module):
    """Own attention on F.scaled_dot_product_attention (allowed), same parameter names."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        b, t, c = x.shape
        q, k, v = self.qkv_proj(x).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, -1).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class OwnFFN(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.fc_out(F.gelu(self.fc_in(x)))


class BlockOwnParts(nn.Module):
    """Everything from torch.nn building blocks, one residual update per line."""

    def __init__(self, d_model, n_heads, d_ff, norm_first=True, dropout=0.0):
        super().__init__()
        self.norm_first = norm_first
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SdpaAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = OwnFFN(d_model, d_ff)

    def forward(self, x, mask=None):
        sublayers = [(self.ln1, lambda h: self.attn(h, mask)), (self.ln2, self.ffn)]
        for norm, f in sublayers:
            x = x + f(norm(x)) if self.norm_first else norm(x + f(x))
        return x


class LoopAttention(nn.Module):
    """One head at a time with einsum, masked with a large negative number."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        c = x.shape[-1]
        d = c // self.n_heads
        q, k, v = self.qkv_proj(x).split(c, dim=-1)
        heads = []
        for h in range(self.n_heads):
            sl = slice(h * d, (h + 1) * d)
            s = torch.einsum("btd,bsd->bts", q[..., sl], k[..., sl]) / math.sqrt(d)
            if mask is not None:
                m = mask if mask.ndim < 4 else mask[:, min(h, mask.shape[1] - 1)]
                s = s.masked_fill(~m, torch.finfo(s.dtype).min)
            heads.append(torch.einsum("bts,bsd->btd", s.softmax(dim=-1), v[..., sl]))
        return self.out_proj(torch.cat(heads, dim=-1))


class BlockLoopHeads(BlockFromLib):
    def __init__(self, d_model, n_heads, d_ff, norm_first=True, dropout=0.0):
        super().__init__(d_model, n_heads, d_ff, norm_first, dropout)
        self.attn = LoopAttention(d_model, n_heads)


# ----------------------------------------------------------------------------- wrong


class BlockAlwaysPre(BlockFromLib):
    def forward(self, x, mask=None):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.ffn(self.ln2(x))


class BlockPlacementSwapped(BlockFromLib):
    def forward(self, x, mask=None):
        if not self.norm_first:
            x = x + self.attn(self.ln1(x), mask=mask)
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask=mask))
        return self.ln2(x + self.ffn(x))


class BlockNoAttnResidual(BlockFromLib):
    def forward(self, x, mask=None):
        x = self.attn(self.ln1(x), mask=mask)
        return x + self.ffn(self.ln2(x))


class BlockNormStream(BlockFromLib):
    def forward(self, x, mask=None):
        x = self.ln1(x)
        x = x + self.attn(x, mask=mask)
        x = self.ln2(x)
        return x + self.ffn(x)


class BlockNormTwice(BlockFromLib):
    def forward(self, x, mask=None):
        x = self.ln1(x + self.attn(self.ln1(x), mask=mask))
        return self.ln2(x + self.ffn(self.ln2(x)))


class BlockMaskIgnored(BlockFromLib):
    def forward(self, x, mask=None):
        return super().forward(x, mask=None)


class BlockLnSwapped(BlockFromLib):
    def forward(self, x, mask=None):
        x = x + self.attn(self.ln2(x), mask=mask)
        return x + self.ffn(self.ln1(x))


class BlockOtherNames(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, norm_first=True, dropout=0.0):
        super().__init__()
        self.norm1 = LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.norm2 = LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff)

    def forward(self, x, mask=None):
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.ffn(self.norm2(x))


class BlockPostBranchNorm(BlockFromLib):
    def forward(self, x, mask=None):
        if self.norm_first:
            return super().forward(x, mask)
        x = x + self.ln1(self.attn(x, mask=mask))
        return x + self.ln2(self.ffn(x))


# ----------------------------------------------------------------------------- shortcuts, stub


class BlockWrapsReference(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, norm_first=True, dropout=0.0):
        super().__init__()
        self.inner = tantra_lib.TransformerBlock(d_model, n_heads, d_ff, norm_first=norm_first)

    def forward(self, x, mask=None):
        return self.inner(x, mask)


class BlockSubclassesReference(tantra_lib.TransformerBlock):
    pass


class BlockTorchAttention(BlockFromLib):
    """Right parameter names, but the attention itself is PyTorch's fused routine."""

    def forward(self, x, mask=None):
        def attend(h):
            out, _ = F.multi_head_attention_forward(
                h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), h.shape[-1], self.attn.n_heads,
                self.attn.qkv_proj.weight, self.attn.qkv_proj.bias, None, None, False, 0.0,
                self.attn.out_proj.weight, self.attn.out_proj.bias, training=False,
                attn_mask=None if mask is None else ~mask, need_weights=False)
            return out.transpose(0, 1)

        if self.norm_first:
            x = x + attend(self.ln1(x))
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + attend(x))
        return self.ln2(x + self.ffn(x))


class BlockStub(BlockFromLib):
    def forward(self, x, mask=None):
        raise NotImplementedError()


# ----------------------------------------------------------------------------- tests


def _fails(impl, hidden=False):
    with pytest.raises(CheckFailed) as info:
        check_TransformerBlock(impl, hidden=hidden, quiet=True)
    return info.value.result


@pytest.mark.parametrize("impl", [BlockFromLib, BlockOwnParts, BlockLoopHeads])
def test_block_accepts_correct(impl, device):
    assert check_TransformerBlock(impl, hidden=True, quiet=True).passed


@pytest.mark.parametrize(
    ("impl", "keyword"),
    [
        (BlockAlwaysPre, "asks for post-LN"),
        (BlockPlacementSwapped, "asks for pre-LN"),
        (BlockNoAttnResidual, "no residual connection"),
        (BlockNormStream, "normalised the residual stream"),
        (BlockNormTwice, "normalised twice"),
        (BlockMaskIgnored, "mask was ignored"),
        (BlockLnSwapped, "ln1 and ln2 are swapped"),
        (BlockOtherNames, "no submodule `ln1`"),
        (BlockPostBranchNorm, "before adding it"),
    ],
)
def test_block_names_the_mistake(impl, keyword, device):
    result = _fails(impl)
    assert result.status == "failed"
    assert keyword in result.message, result.message


@pytest.mark.parametrize("impl", [BlockWrapsReference, BlockSubclassesReference, BlockTorchAttention])
def test_block_refuses_shortcuts(impl, device):
    assert _fails(impl).status == "shortcut"


def test_block_not_attempted(device):
    assert _fails(BlockStub).status == "not_attempted"
