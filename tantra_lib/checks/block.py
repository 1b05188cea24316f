"""Checks of lesson 07_residual_block: ``TransformerBlock``.

The learner's block is checked against PyTorch's own ``nn.TransformerEncoderLayer`` (GELU,
no dropout, batch_first) for both norm placements: a reference layer gets seeded random
weights (LayerNorm weights included, so a forgotten scale shows), the same weights are copied
into the learner's ``ln1``, ``attn`` (``qkv_proj``, ``out_proj``), ``ln2`` and ``ffn``
(``fc_in``, ``fc_out``), and the outputs are compared, with and without a mask.

Before reporting plain "wrong values" the check runs a small float64 block of its own in the
usual wrong arrangements (pre-LN and post-LN swapped, a residual missing, the residual stream
itself normalised, ln1 and ln2 swapped, normalising twice, the mask ignored, ReLU in the FFN)
and names the one the learner's output matches. Tested against wrong and right
implementations in tests/test_checks_block.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..device import get_device
from ._core import Mistake, call, compare, exercise, expect

__all__ = ["check_TransformerBlock"]

FORBID_BLOCK = (
    "torch.nn.TransformerEncoderLayer",
    "torch.nn.TransformerDecoderLayer",
    "torch.nn.TransformerEncoder",
    "torch.nn.Transformer",
    "torch.nn.MultiheadAttention",
    "torch.nn.functional.multi_head_attention_forward",
    "torch._transformer_encoder_layer_fwd",
    "tantra_lib.TransformerBlock",
)

# learner parameter <- nn.TransformerEncoderLayer parameter
_WEIGHT_MAP = (
    ("ln1.weight", "norm1.weight"),
    ("ln1.bias", "norm1.bias"),
    ("attn.qkv_proj.weight", "self_attn.in_proj_weight"),  # rows [q; k; v] in both
    ("attn.qkv_proj.bias", "self_attn.in_proj_bias"),
    ("attn.out_proj.weight", "self_attn.out_proj.weight"),
    ("attn.out_proj.bias", "self_attn.out_proj.bias"),
    ("ln2.weight", "norm2.weight"),
    ("ln2.bias", "norm2.bias"),
    ("ffn.fc_in.weight", "linear1.weight"),
    ("ffn.fc_in.bias", "linear1.bias"),
    ("ffn.fc_out.weight", "linear2.weight"),
    ("ffn.fc_out.bias", "linear2.bias"),
)

_HINT = {
    True: "pre-LN (norm_first=True): x = x + attn(ln1(x), mask=mask); then x = x + ffn(ln2(x)).",
    False: "post-LN (norm_first=False): x = ln1(x + attn(x, mask=mask)); then x = ln2(x + ffn(x)).",
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, offset=0.0, dtype=torch.float32):
    x = torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale + offset
    return x.to(dtype).to(get_device())


def _reference(d_model, n_heads, d_ff, norm_first, seed):
    """nn.TransformerEncoderLayer in float64 on the check device, with seeded weights."""
    with torch.random.fork_rng(devices=[]):  # its default init must not move the learner's RNG
        ref = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu",
                                         batch_first=True, norm_first=norm_first)
    g = _gen(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.startswith("norm"):
                value = 1.0 + 0.3 * r if name.endswith("weight") else 0.3 * r
            elif name.endswith("bias"):
                value = 0.2 * r
            else:
                value = r / math.sqrt(p.shape[-1])  # like a fan-in init: activations stay O(1)
            p.copy_(value.to(p.dtype))
    # train() with dropout 0 is deterministic and keeps PyTorch off its fused inference path
    return ref.double().to(get_device()).train()


def _get(module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _load(block, ref) -> None:
    """Copy the reference's weights into the learner's block, naming what is missing or misshapen."""
    for sub, what in (("ln1", "the first LayerNorm"), ("attn", "the MultiHeadAttention"),
                      ("ln2", "the second LayerNorm"), ("ffn", "the FeedForward")):
        expect(isinstance(getattr(block, sub, None), nn.Module),
               f"your TransformerBlock has no submodule `{sub}` ({what}).",
               "In __init__: self.ln1 = LayerNorm(d_model); self.attn = MultiHeadAttention(d_model, n_heads); "
               "self.ln2 = LayerNorm(d_model); self.ffn = FeedForward(d_model, d_ff).")
    ref_params = dict(ref.named_parameters())
    with torch.no_grad():
        for ours, theirs in _WEIGHT_MAP:
            p = _get(block, ours)
            expect(isinstance(p, torch.Tensor), f"your TransformerBlock has no parameter `{ours}`.",
                   "Build it from tantra_lib.MultiHeadAttention (qkv_proj, out_proj), tantra_lib.LayerNorm "
                   "(weight, bias) and tantra_lib.FeedForward (fc_in, fc_out), or modules with the same names.")
            src = ref_params[theirs]
            expect(tuple(p.shape) == tuple(src.shape),
                   f"`{ours}` has shape {tuple(p.shape)}, expected {tuple(src.shape)}.",
                   "TransformerBlock(d_model, n_heads, d_ff): pass d_model, n_heads and d_ff on to the parts.")
            p.copy_(src.to(p.dtype))


# ----------------------------------------------------------------------------- a small functional block


def _params(ref) -> dict:
    return {name: p.detach() for name, p in ref.named_parameters()}


def _ln(x, P, i):
    return F.layer_norm(x, x.shape[-1:], P[f"norm{i}.weight"], P[f"norm{i}.bias"], eps=1e-5)


def _attn(x, P, n_heads, mask):
    b, t, c = x.shape
    q, k, v = F.linear(x, P["self_attn.in_proj_weight"], P["self_attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, t, n_heads, c // n_heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
    s = q @ k.transpose(-2, -1) / math.sqrt(c // n_heads)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    out = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)  # (B, H, T, D) -> (B, T, C)
    return F.linear(out, P["self_attn.out_proj.weight"], P["self_attn.out_proj.bias"])


def _ffn(x, P, act=F.gelu):
    return F.linear(act(F.linear(x, P["linear1.weight"], P["linear1.bias"])), P["linear2.weight"], P["linear2.bias"])


def _block(x, P, h, mask, layout, act=F.gelu):
    """The block in one of several arrangements (right and wrong) in float64."""
    def a(z):
        return _attn(z, P, h, mask)

    def f(z):
        return _ffn(z, P, act)

    def n(z, i):
        return _ln(z, P, i)

    if layout == "pre":
        x = x + a(n(x, 1))
        return x + f(n(x, 2))
    if layout == "post":
        x = n(x + a(x), 1)
        return n(x + f(x), 2)
    if layout == "pre_no_attn_res":
        x = a(n(x, 1))
        return x + f(n(x, 2))
    if layout == "pre_no_ffn_res":
        x = x + a(n(x, 1))
        return f(n(x, 2))
    if layout == "pre_no_res":
        return f(n(a(n(x, 1)), 2))
    if layout == "pre_norm_stream":
        x = n(x, 1)
        x = x + a(x)
        x = n(x, 2)
        return x + f(x)
    if layout == "pre_ln_swapped":
        x = x + a(n(x, 2))
        return x + f(n(x, 1))
    if layout == "pre_ln1_twice":
        x = x + a(n(x, 1))
        return x + f(n(x, 1))
    if layout == "both":
        x = n(x + a(n(x, 1)), 1)
        return n(x + f(n(x, 2)), 2)
    if layout == "post_no_attn_res":
        x = n(a(x), 1)
        return n(x + f(x), 2)
    if layout == "post_no_ffn_res":
        x = n(x + a(x), 1)
        return n(f(x), 2)
    if layout == "post_no_res":
        return n(f(n(a(x), 1)), 2)
    if layout == "post_branch_norm":
        x = x + n(a(x), 1)
        return x + n(f(x), 2)
    if layout == "post_ln_swapped":
        x = n(x + a(x), 2)
        return n(x + f(x), 1)
    raise ValueError(layout)


def _mistakes(x, P, h, mask, norm_first):
    right, other = ("pre", "post") if norm_first else ("post", "pre")
    res = "Add the sub-layer's input back: " + _HINT[norm_first]
    out = [
        (_block(x, P, h, mask, other),
         f"the norms are placed {other}-LN style, but norm_first={norm_first} asks for {right}-LN.",
         _HINT[norm_first]),
        (_block(x, P, h, mask, "both"),
         "normalised twice: both before each sub-layer (pre-LN) and after the residual add (post-LN).",
         _HINT[norm_first]),
        (_block(x, P, h, None, right) if mask is not None else None, "the mask was ignored.",
         "Pass `mask` on to the attention: self.attn(..., mask=mask)."),
        (_block(x, P, h, mask, right, act=F.relu), "the feed-forward network uses ReLU; here it is GELU.",
         "Use tantra_lib.FeedForward (or your lesson-06 one: fc_out(gelu(fc_in(x))))."),
    ]
    if norm_first:
        out += [
            (_block(x, P, h, mask, "pre_no_attn_res"), "the attention sub-layer has no residual connection.", res),
            (_block(x, P, h, mask, "pre_no_ffn_res"), "the feed-forward sub-layer has no residual connection.", res),
            (_block(x, P, h, mask, "pre_no_res"), "there are no residual connections at all.", res),
            (_block(x, P, h, mask, "pre_norm_stream"),
             "normalised the residual stream itself (x = ln1(x); x = x + attn(x)): the residual must carry the "
             "un-normalised x, only the sub-layer's input is normalised.",
             "x = x + attn(ln1(x)): keep x itself out of the LayerNorm."),
            (_block(x, P, h, mask, "pre_ln_swapped"), "ln1 and ln2 are swapped (ln2 before the attention).",
             _HINT[True]),
            (_block(x, P, h, mask, "pre_ln1_twice"), "used ln1 before both sub-layers; ln2 is never used.",
             _HINT[True]),
        ]
    else:
        out += [
            (_block(x, P, h, mask, "post_no_attn_res"), "the attention sub-layer has no residual connection.", res),
            (_block(x, P, h, mask, "post_no_ffn_res"), "the feed-forward sub-layer has no residual connection.", res),
            (_block(x, P, h, mask, "post_no_res"), "there are no residual connections at all.", res),
            (_block(x, P, h, mask, "post_branch_norm"),
             "normalised the sub-layer's output before adding it (x + ln1(attn(x))); post-LN normalises the sum.",
             _HINT[False]),
            (_block(x, P, h, mask, "post_ln_swapped"), "ln1 and ln2 are swapped (ln2 after the attention).",
             _HINT[False]),
        ]
    return out


# ----------------------------------------------------------------------------- the check


def _close(out, expected, tol) -> bool:
    """Is the learner's output already right? (Then naming a mistake is pointless.)"""
    return (isinstance(out, torch.Tensor) and out.shape == expected.shape and out.device == expected.device
            and bool(torch.allclose(out.detach().double(), expected.double(), atol=tol, rtol=tol)))


def _instantiate(cls, *args, **kwargs):
    with torch.random.fork_rng(devices=[]):  # keep the caller's global RNG where it was
        return cls(*args, **kwargs)


def _case(TransformerBlock, d_model, n_heads, d_ff, norm_first, x, mask_kind, seed, label):
    dev, dtype = x.device, x.dtype
    block = _instantiate(TransformerBlock, d_model, n_heads, d_ff, norm_first=norm_first)
    expect(isinstance(block, nn.Module), "TransformerBlock(...) is not an nn.Module.",
           "class TransformerBlock(nn.Module): ...")
    ref = _reference(d_model, n_heads, d_ff, norm_first, seed)
    _load(block, ref)
    block = block.to(device=dev, dtype=dtype).eval()
    b, t, _ = x.shape
    mask, ref_kwargs = None, {}
    if mask_kind == "causal":
        mask = torch.ones(t, t, dtype=torch.bool, device=dev).tril()  # True = may attend
        ref_kwargs = {"src_mask": ~mask}  # PyTorch's convention: True = may NOT attend
    elif mask_kind == "padding":
        lengths = torch.tensor([t - 2 * i for i in range(b)], device=dev).clamp_min(1)
        keep = torch.arange(t, device=dev) < lengths[:, None]  # (B, T)
        mask = keep[:, None, None, :]  # (B, 1, 1, T): every query sees only the real keys
        # PyTorch takes a per-head (B * H, T, T) mask, True = may NOT attend
        ref_kwargs = {"src_mask": ~mask.expand(b, n_heads, t, t).reshape(b * n_heads, t, t)}
    with torch.no_grad():
        expected = ref(x.double(), **ref_kwargs)
    out = call(block, x, name="TransformerBlock.forward") if mask is None else \
        call(block, x, mask=mask, name="TransformerBlock.forward")
    placement = "pre-LN" if norm_first else "post-LN"
    what = f"TransformerBlock({d_model}, {n_heads}, {d_ff}, norm_first={norm_first}) [{placement}] on {label}"
    if mask is not None and isinstance(out, torch.Tensor) and out.shape == expected.shape and \
            bool(torch.isnan(out).any()):
        raise Mistake(f"{what} gives NaN: is the mask inverted (True should mean *may attend*)?",
                      "mask=True keeps a key; fill the scores where ~mask with -inf.")
    tol = {torch.float32: 1e-4, torch.float64: 1e-6, torch.bfloat16: 1e-1}.get(dtype, 1e-2)
    mistakes = ()
    if dtype == torch.float32 and not _close(out, expected, tol):  # the variants cost more than the case
        mistakes = _mistakes(x.double(), _params(ref), n_heads, mask, norm_first)
    compare(out, expected.to(dtype), what=what, hint=_HINT[norm_first], mistakes=mistakes, atol=tol, rtol=tol)
    return block


@exercise("TransformerBlock", lesson="07_residual_block", forbids=FORBID_BLOCK)
def check_TransformerBlock(TransformerBlock, hidden=False):
    expect(isinstance(TransformerBlock, type) and issubclass(TransformerBlock, nn.Module),
           "`TransformerBlock` is not an nn.Module class.", "Define `class TransformerBlock(nn.Module):`.")
    cases = [  # (d_model, n_heads, d_ff, norm_first, x, mask, weight seed, label)
        (16, 4, 32, True, _randn(2, 5, 16, seed=1), None, 2, "x of shape (2, 5, 16)"),
        (16, 4, 32, False, _randn(2, 5, 16, seed=3), None, 4, "x of shape (2, 5, 16)"),
        (16, 4, 32, True, _randn(2, 6, 16, seed=5), "causal", 6, "x of shape (2, 6, 16) with a causal mask"),
        (16, 4, 32, False, _randn(2, 6, 16, seed=7), "causal", 8, "x of shape (2, 6, 16) with a causal mask"),
    ]
    if hidden:
        cases += [
            (24, 3, 40, True, _randn(1, 7, 24, seed=9), None, 10, "x of shape (1, 7, 24)"),
            (8, 2, 8, False, _randn(3, 4, 8, seed=11, scale=5.0, offset=3.0), None, 12,
             "x with large values (std 5, mean 3)"),
            (16, 4, 32, True, _randn(3, 6, 16, seed=13), "padding", 14, "x with a (B, 1, 1, T) padding mask"),
            (16, 2, 24, False, _randn(2, 5, 16, seed=15, dtype=torch.float64), "causal", 16, "float64 x"),
            (16, 4, 32, True, _randn(2, 5, 16, seed=17, dtype=torch.bfloat16), None, 18, "bfloat16 x"),
            (16, 4, 32, False, _randn(5, 2, 16, seed=19).transpose(0, 1), "causal", 20,
             "a non-contiguous x of shape (2, 5, 16)"),
        ]
    for d_model, n_heads, d_ff, norm_first, x, mask_kind, seed, label in cases:
        _case(TransformerBlock, d_model, n_heads, d_ff, norm_first, x, mask_kind, seed, label)
    # gradients reach every part (a .detach() or torch.no_grad() in forward would stop training)
    block = _case(TransformerBlock, 16, 4, 32, True, _randn(2, 5, 16, seed=21), None, 22, "x of shape (2, 5, 16)")
    block.zero_grad(set_to_none=True)
    block(_randn(2, 5, 16, seed=23)).pow(2).sum().backward()
    for name in ("ln1.weight", "attn.qkv_proj.weight", "ln2.weight", "ffn.fc_in.weight"):
        grad = _get(block, name).grad
        expect(grad is not None and bool(grad.abs().sum() > 0), f"no gradient reaches {name}.",
               "Use the submodules in forward with torch operations only (no .detach(), no torch.no_grad()).")
