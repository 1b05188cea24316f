"""tantra_lib.block against nn.TransformerEncoderLayer (activation='gelu', dropout 0,
batch_first, norm_first True and False), weights copied in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tantra_lib import FeedForward, LayerNorm, MultiHeadAttention, TransformerBlock, causal_mask

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def randn(*shape, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def twins(d_model, n_heads, d_ff, norm_first, device, dtype=torch.float32, eps=1e-5, seed=0):
    """Our TransformerBlock and an nn.TransformerEncoderLayer with the same (random) weights."""
    torch.manual_seed(seed)
    theirs = nn.TransformerEncoderLayer(
        d_model, n_heads, d_ff, dropout=0.0, activation="gelu", layer_norm_eps=eps, batch_first=True,
        norm_first=norm_first,
    )
    with torch.no_grad():  # torch initialises biases and LayerNorm to 0 / 1; make every parameter matter
        for name, p in theirs.named_parameters():
            if "bias" in name or "norm" in name:
                p.normal_(mean=1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else 0.0, std=0.3)
    theirs = theirs.to(device=device, dtype=dtype)
    ours = TransformerBlock(d_model, n_heads, d_ff, norm_first=norm_first, eps=eps).to(device=device, dtype=dtype)
    mapping = {  # ours <- theirs
        "attn.qkv_proj.weight": "self_attn.in_proj_weight",  # rows [q; k; v] in both
        "attn.qkv_proj.bias": "self_attn.in_proj_bias",
        "attn.out_proj.weight": "self_attn.out_proj.weight",
        "attn.out_proj.bias": "self_attn.out_proj.bias",
        "ffn.fc_in.weight": "linear1.weight",
        "ffn.fc_in.bias": "linear1.bias",
        "ffn.fc_out.weight": "linear2.weight",
        "ffn.fc_out.bias": "linear2.bias",
        "ln1.weight": "norm1.weight",
        "ln1.bias": "norm1.bias",
        "ln2.weight": "norm2.weight",
        "ln2.bias": "norm2.bias",
    }
    src = theirs.state_dict()
    assert set(ours.state_dict()) == set(mapping), "TransformerBlock's parameters changed: update the mapping"
    ours.load_state_dict({k: src[v] for k, v in mapping.items()})
    return ours, theirs


def test_structure():
    block = TransformerBlock(16, 4, 64)
    assert isinstance(block.ln1, LayerNorm) and isinstance(block.ln2, LayerNorm)
    assert isinstance(block.attn, MultiHeadAttention) and isinstance(block.ffn, FeedForward)
    assert block.attn.n_heads == 4 and block.ffn.fc_in.weight.shape == (64, 16)
    assert block.norm_first is True
    assert TransformerBlock(16, 4, 64, norm_first=False, eps=1e-12).ln1.eps == 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("b,t,d_model,n_heads,d_ff", [(2, 5, 16, 4, 32), (1, 1, 8, 2, 16), (3, 7, 12, 3, 48)])
def test_block_matches_transformer_encoder_layer(device, dtype, norm_first, b, t, d_model, n_heads, d_ff):
    ours, theirs = twins(d_model, n_heads, d_ff, norm_first, device, dtype, seed=t)
    x = randn(b, t, d_model, device=device, dtype=dtype, seed=1)
    before = x.clone()
    out = ours(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, theirs(x), **TOL[dtype])
    mask = causal_mask(t, device=device)
    # nn.TransformerEncoderLayer's bool mask means "may NOT attend": pass the negation
    torch.testing.assert_close(ours(x, mask=mask), theirs(x, src_mask=~mask), **TOL[dtype])
    torch.testing.assert_close(x, before, rtol=0, atol=0)


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_padding_mask_and_eps(device, norm_first):
    ours, theirs = twins(8, 2, 16, norm_first, device, eps=1e-12, seed=3)
    x = randn(2, 4, 8, device=device, seed=2)
    keep = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool, device=device)
    torch.testing.assert_close(
        ours(x, mask=keep[:, None, None, :]), theirs(x, src_key_padding_mask=~keep), **TOL[torch.float32]
    )


def test_block_non_contiguous_input(device):
    ours, theirs = twins(8, 2, 16, True, device, seed=4)
    x = randn(4, 2, 8, device=device, seed=3).transpose(0, 1)  # (2, 4, 8) strided
    assert not x.is_contiguous()
    torch.testing.assert_close(ours(x), theirs(x.contiguous()), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_block_low_precision(device, dtype):
    ours, theirs = twins(16, 4, 32, True, device, seed=5)
    x = randn(2, 5, 16, device=device, seed=4)
    mask = causal_mask(5, device=device)
    ref = theirs(x, src_mask=~mask)
    out = ours.to(dtype)(x.to(dtype), mask=mask)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=1e-1)


def test_dropout_only_in_training(device):
    torch.manual_seed(6)
    block = TransformerBlock(8, 2, 16, dropout=0.5).to(device)
    x = randn(2, 4, 8, device=device, seed=5)
    block.eval()
    torch.testing.assert_close(block(x), block(x), rtol=0, atol=0)
    block.train()
    assert not torch.allclose(block(x), block(x))


def test_block_gradcheck(device):
    x = randn(1, 3, 4, device=device, dtype=torch.float64, seed=6).requires_grad_()
    mask = causal_mask(3, device=device)
    for norm_first in (True, False):
        block, _ = twins(4, 2, 8, norm_first, device, dtype=torch.float64, seed=7)
        assert torch.autograd.gradcheck(lambda t, m=block: m(t, mask=mask), (x,))
