"""Checks of lesson 03_multi_head: ``split_heads``, ``merge_heads``, ``MultiHeadAttention``.

``split_heads`` / ``merge_heads`` are compared with a view + transpose of the input (and with
each other: merging must undo splitting). ``MultiHeadAttention`` is verified the way the
course verifies every module: the weights of a randomly initialised PyTorch
``nn.MultiheadAttention(batch_first=True)`` are copied into the learner's module
(``in_proj_weight`` -> ``qkv_proj.weight``, rows [q; k; v]) and the outputs are compared,
without a mask, with a causal mask and with a padding mask. Before reporting "wrong values"
the checks try the typical mistakes (reshape without transpose, heads merged in the wrong
order, q/k/v chunks swapped, √d_model instead of √d_head, no output projection, mask inverted
or ignored) and name the one that matches. Tested in tests/test_checks_multi_head.py.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..device import get_device
from ..shortcut_guard import ShortcutUsed
from ._core import Mistake, _close, call, compare, exercise, expect
from .softmax import _gen, _masked_reference, _randn

__all__ = ["check_split_heads", "check_merge_heads", "check_MultiHeadAttention"]


def _tol(dtype):
    return {torch.float16: 2e-2, torch.bfloat16: 6e-2}.get(dtype, 1e-5)


# ----------------------------------------------------------------------------- split_heads

_SPLIT_HINT = ("x.reshape(..., T, n_heads, d_head) then .transpose(-3, -2): reshape keeps each head's features "
               "together, the transpose moves the head axis in front of the positions.")


def _split_ref(x, h):
    *lead, t, c = x.shape
    return x.reshape(*lead, t, h, c // h).transpose(-3, -2)  # (..., T, H, D) -> (..., H, T, D)


def _split_mistakes(x, h):
    *lead, t, c = x.shape
    d = c // h
    return [
        (x.reshape(*lead, h, t, d), "reshape without transpose: the (T, C) numbers were cut into (H, T, D) in memory "
         "order, so a 'head' mixes features of different positions.", _SPLIT_HINT),
        (x.reshape(*lead, t, d, h).movedim(-1, -3), "each head got every n_heads-th feature (split as (d_head, "
         "n_heads) instead of (n_heads, d_head)).",
         "Head h owns the contiguous features h*d_head ... (h+1)*d_head - 1."),
        (x.reshape(*lead, t, h, d), "the head axis is not moved in front of the positions: shape (..., T, H, D).",
         "Transpose the T and H axes: .transpose(-3, -2)."),
        (x.reshape(*lead, t, h, d).transpose(-3, -2).transpose(-2, -1), "positions and features are swapped "
         "inside each head: shape (..., H, D, T).", "Only the T and H axes are transposed."),
    ]


@exercise("split_heads", lesson="03_multi_head", forbids=("tantra_lib.split_heads", "tantra_lib.MultiHeadAttention"))
def check_split_heads(split_heads, hidden=False):
    expect(callable(split_heads), "`split_heads` is not a function.", "Define `def split_heads(x, n_heads):`.")
    cases = [(_randn(2, 5, 12, seed=101), 3, "x (2, 5, 12) with n_heads=3"),
             (_randn(4, 8, seed=102), 2, "x (4, 8) with n_heads=2"),
             (_randn(2, 3, 6, 8, seed=103), 4, "a 4-d x (2, 3, 6, 8) with n_heads=4")]
    if hidden:
        cases += [(_randn(3, 1, 16, seed=104), 4, "t = 1"),
                  (_randn(2, 7, 6, seed=105), 1, "n_heads = 1"),
                  (_randn(2, 5, 6, seed=106), 6, "n_heads = d_model"),
                  (_randn(2, 12, 5, seed=107).transpose(-2, -1), 3, "a non-contiguous x"),
                  (_randn(2, 4, 8, seed=108, dtype=torch.bfloat16), 2, "bfloat16 x"),
                  (_randn(2, 4, 8, seed=109, dtype=torch.float64), 4, "float64 x")]
    for x, h, label in cases:
        out = call(split_heads, x, h, name="split_heads")
        compare(out, _split_ref(x, h), what=f"split_heads({label})", hint=_SPLIT_HINT,
                mistakes=_split_mistakes(x, h), atol=0, rtol=0)


# ----------------------------------------------------------------------------- merge_heads

_MERGE_HINT = ("x.transpose(-3, -2) to (..., T, H, D), then .reshape(..., T, H * D) (reshape, not view: the "
               "transposed tensor is not contiguous).")


def _merge_ref(x):
    *lead, h, t, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, t, h * d)  # (..., H, T, D) -> (..., T, H*D)


def _merge_mistakes(x):
    *lead, h, t, d = x.shape
    return [
        (x.reshape(*lead, t, h * d), "reshape without transpose: the heads' numbers were read in memory order, so "
         "positions get mixed up.", _MERGE_HINT),
        (x.permute(*range(len(lead)), -2, -1, -3).reshape(*lead, t, h * d),
         "heads merged in the wrong order: features are laid out (d_head, n_heads) instead of (n_heads, d_head).",
         "After the transpose the last two axes must be (H, D), so head 0's features come first."),
        (x.transpose(-3, -2), "the heads were not merged: shape (..., T, H, D).",
         "Flatten the last two axes: .reshape(..., T, H * D)."),
        (x.sum(dim=-3), "the heads were summed instead of concatenated.", _MERGE_HINT),
    ]


@exercise("merge_heads", lesson="03_multi_head", forbids=("tantra_lib.merge_heads", "tantra_lib.MultiHeadAttention"))
def check_merge_heads(merge_heads, hidden=False):
    expect(callable(merge_heads), "`merge_heads` is not a function.", "Define `def merge_heads(x):`.")
    cases = [(_randn(2, 3, 5, 4, seed=111), "x (2, 3, 5, 4)"),
             (_randn(2, 4, 6, seed=112), "x (2, 4, 6) (no batch)"),
             (_randn(2, 2, 4, 3, 5, seed=113), "a 5-d x (2, 2, 4, 3, 5)")]
    if hidden:
        cases += [(_randn(3, 4, 1, 2, seed=114), "t = 1"),
                  (_randn(2, 1, 7, 6, seed=115), "one head"),
                  (_randn(2, 6, 5, 1, seed=116), "d_head = 1"),
                  (_randn(2, 4, 3, 5, seed=117).transpose(-2, -1), "a non-contiguous x"),
                  (_randn(2, 2, 4, 8, seed=118, dtype=torch.bfloat16), "bfloat16 x"),
                  (_randn(2, 2, 4, 8, seed=119, dtype=torch.float64), "float64 x")]
    for x, label in cases:
        try:
            out = call(merge_heads, x, name="merge_heads")
        except RuntimeError as e:
            if "view size is not compatible" in str(e):
                raise Mistake(f"merge_heads({label}) called .view() on a transposed (non-contiguous) tensor.",
                              "Use .reshape(...) or .contiguous().view(...) after the transpose.") from None
            raise
        compare(out, _merge_ref(x), what=f"merge_heads({label})", hint=_MERGE_HINT,
                mistakes=_merge_mistakes(x), atol=0, rtol=0)
    x = _randn(2, 5, 12, seed=120)
    again = call(merge_heads, _split_ref(x, 3), name="merge_heads")
    compare(again, x, what="merge_heads(split_heads(x, 3))", hint="merge_heads must undo split_heads exactly.",
            atol=0, rtol=0)


# ----------------------------------------------------------------------------- MultiHeadAttention

_MHA_HINT = ("1) q, k, v = qkv_proj(x).chunk(3, dim=-1); 2) split_heads each; 3) scaled_dot_product_attention "
             "per head (scale 1/√d_head); 4) merge_heads; 5) out_proj.")
_ORDER_MSG = ("q, k and v were taken from the wrong chunks of qkv_proj's output: its rows are [q; k; v] "
              "(like nn.MultiheadAttention.in_proj_weight).")


def _variant(x, w, b, wo, bo, h, mask, order="qkv", layout="chunk", scale="head", split="ok", merge="ok",
             mask_mode="ok", out_proj=True):
    """A (possibly wrong) multi-head attention in float64, to name the mistake a learner made."""
    bsz, t, c = x.shape
    d = c // h
    qkv = F.linear(x, w, b)  # (B, T, 3C)
    if layout == "interleaved":  # per-head [q_h, k_h, v_h] blocks
        q, k, v = (p.transpose(1, 2) for p in qkv.reshape(bsz, t, h, 3 * d).chunk(3, dim=-1))
    else:
        chunks = qkv.chunk(3, dim=-1)
        parts = {name: chunks[i] for i, name in enumerate(order)}

        def sp(z):
            if split == "no_transpose":
                return z.reshape(bsz, h, t, d)
            if split == "strided":
                return z.reshape(bsz, t, d, h).permute(0, 3, 1, 2)
            return z.reshape(bsz, t, h, d).transpose(1, 2)

        q, k, v = sp(parts["q"]), sp(parts["k"]), sp(parts["v"])
    s = q @ k.transpose(-2, -1)  # (B, H, T, T)
    s = s / {"head": math.sqrt(d), "model": math.sqrt(c), "none": 1.0}[scale]
    if mask is not None and mask_mode != "ignored":
        w = _masked_reference(s, ~mask if mask_mode == "inverted" else mask)  # fully masked rows: zeros
    else:
        w = F.softmax(s, dim=-1)
    o = w @ v  # (B, H, T, D)
    if merge == "no_transpose":
        o = o.reshape(bsz, t, c)
    elif merge == "strided":
        o = o.permute(0, 2, 3, 1).reshape(bsz, t, c)
    else:
        o = o.transpose(1, 2).reshape(bsz, t, c)
    return F.linear(o, wo, bo) if out_proj else o


def _mha_mistakes(x, params, h, mask):
    args = (x, *params, h, mask)
    out = [(_variant(*args, order="".join(p)), _ORDER_MSG, "q, k, v = qkv.chunk(3, dim=-1), in that order.")
           for p in itertools.permutations("qkv") if "".join(p) != "qkv"]
    out += [
        (_variant(*args, layout="interleaved"), "read qkv_proj's output as per-head [q_h, k_h, v_h] blocks; the "
         "layout is [all q; all k; all v].", "Chunk the 3*d_model outputs into three first, then split heads."),
        (_variant(*args, scale="none"), "the 1/√d_head scale is missing.", "Divide the scores by √d_head."),
        (_variant(*args, scale="model"), "scaled the scores by 1/√d_model instead of 1/√d_head.",
         "Each head's dot product has d_head = d_model / n_heads terms: divide by √d_head."),
        (_variant(*args, split="no_transpose"), "split_heads: reshape without transpose (a head mixes positions).",
         "(B, T, C) -> (B, T, H, D) -> transpose to (B, H, T, D)."),
        (_variant(*args, split="no_transpose", merge="no_transpose"),
         "reshape without transpose when splitting and merging heads (a head mixes positions).",
         "(B, T, C) -> (B, T, H, D) -> transpose to (B, H, T, D), and the reverse when merging."),
        (_variant(*args, merge="no_transpose"), "merge_heads: reshape without transpose (positions get mixed).",
         "(B, H, T, D) -> transpose to (B, T, H, D) -> reshape to (B, T, C)."),
        (_variant(*args, merge="strided"), "heads merged in the wrong order ((d_head, n_heads) instead of "
         "(n_heads, d_head)).", "Transpose to (B, T, H, D) before flattening the last two axes."),
        (_variant(*args, split="strided", merge="strided"), "each head got every n_heads-th feature instead of a "
         "contiguous block of d_head features.", "reshape to (B, T, n_heads, d_head), not (B, T, d_head, n_heads)."),
        (_variant(*args, out_proj=False), "the output projection out_proj is not applied.",
         "Finish with self.out_proj(merged)."),
    ]
    if mask is not None:
        out += [(_variant(*args, mask_mode="inverted"), "the mask looks inverted: True must mean *may attend*.",
                 "Pass the mask as it is to masked_softmax / scaled_dot_product_attention (True = keep)."),
                (_variant(*args, mask_mode="ignored"), "the mask was ignored.",
                 "Pass `mask` on to the attention of every head.")]
    return out


def _linear(module, attr, n_in, n_out, bias):
    layer = getattr(module, attr, None)
    expect(isinstance(layer, nn.Linear), f"`self.{attr}` should be an nn.Linear, found {type(layer).__name__}.",
           f"In __init__: self.{attr} = nn.Linear({n_in}, {n_out}, bias=bias).")
    expect((layer.in_features, layer.out_features) == (n_in, n_out),
           f"`self.{attr}` maps {layer.in_features} -> {layer.out_features} features, expected {n_in} -> {n_out}.",
           f"nn.Linear({n_in}, {n_out}): qkv_proj makes q, k and v at once, out_proj maps back to d_model.")
    expect((layer.bias is not None) == bias, f"`self.{attr}` {'has no' if bias else 'has a'} bias although "
           f"bias={bias} was asked.", "Pass bias=bias to nn.Linear.")
    return layer


def _reference(d, h, bias, gen):
    """An nn.MultiheadAttention with seeded random weights (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        ref = nn.MultiheadAttention(d, h, bias=bias, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(d))
    return ref.to(get_device()).eval()


def _check_mha_config(cls, d, h, bias, dtype, seed, cases, label):
    dev = get_device()
    gen = _gen(seed)
    with torch.random.fork_rng(devices=[]):
        model = cls(d, h) if bias else cls(d, h, bias=False)
    expect(isinstance(model, nn.Module), "`MultiHeadAttention` must be an nn.Module subclass.",
           "class MultiHeadAttention(nn.Module): ... and call super().__init__() first.")
    for sub in model.modules():  # a forbidden module kept as a layer is a shortcut even before it runs
        if isinstance(sub, nn.MultiheadAttention):
            raise ShortcutUsed("MultiHeadAttention", "torch.nn.MultiheadAttention")
    qkv = _linear(model, "qkv_proj", d, 3 * d, bias)
    proj = _linear(model, "out_proj", d, d, bias)
    n_params = sum(p.numel() for p in model.parameters())
    expected_n = 4 * d * d + (4 * d if bias else 0)
    expect(n_params == expected_n, f"MultiHeadAttention({d}, {h}) has {n_params} parameters, expected {expected_n} "
           "(qkv_proj and out_proj only).", "Do not create extra layers or per-head copies of the projections.")
    ref = _reference(d, h, bias, gen)
    with torch.no_grad():  # nn.MultiheadAttention's in_proj rows are [q; k; v], like qkv_proj
        qkv.weight.copy_(ref.in_proj_weight)
        proj.weight.copy_(ref.out_proj.weight)
        if bias:
            qkv.bias.copy_(ref.in_proj_bias)
            proj.bias.copy_(ref.out_proj.bias)
    model = model.to(device=dev, dtype=dtype).eval()
    params = (ref.in_proj_weight, ref.in_proj_bias, ref.out_proj.weight, ref.out_proj.bias)
    tol = _tol(dtype)
    for x, mask, case in cases:
        x = x.to(dtype)
        what = f"MultiHeadAttention({d}, {h}{'' if bias else ', bias=False'}) on {case}{label}"
        with torch.no_grad():
            out = call(model, x, name="MultiHeadAttention.forward") if mask is None \
                else call(model, x, mask=mask, name="MultiHeadAttention.forward")
        if isinstance(out, tuple):
            raise Mistake(f"{what} returned a tuple; forward(x, mask) should return only the (B, T, d_model) output.",
                          "return self.out_proj(...) — not (out, weights).")
        xd = x.double()
        with torch.no_grad():
            if mask is None:
                exp = ref(xd, xd, xd, need_weights=False)[0]
            elif mask.dim() == 2:  # (T, T) causal; PyTorch's attn_mask uses True = blocked
                exp = ref(xd, xd, xd, attn_mask=~mask, need_weights=False)[0]
            else:  # (B, 1, 1, T) padding
                exp = ref(xd, xd, xd, key_padding_mask=~mask[:, 0, 0, :], need_weights=False)[0]
            exp = exp.to(dtype)
            # the mistakes are only worked out when the answer is wrong (they cost a dozen forward passes)
            right = isinstance(out, torch.Tensor) and _close(out, exp, tol, tol)
            low = dtype in (torch.float16, torch.bfloat16)
            mistakes = () if right or low else _mha_mistakes(xd, params, h, mask)
        compare(out, exp, what=what, hint=_MHA_HINT, mistakes=mistakes, atol=tol, rtol=tol)
    # gradients reach the projections (no .detach() / torch.no_grad() inside forward)
    x = cases[0][0].to(dtype)
    model.zero_grad()
    model(x).float().sum().backward()
    expect(qkv.weight.grad is not None and proj.weight.grad is not None,
           "no gradient reaches qkv_proj / out_proj: forward must stay differentiable.",
           "Do not use torch.no_grad(), .detach() or .data inside forward.")


@exercise("MultiHeadAttention", lesson="03_multi_head", forbids=(
    "torch.nn.MultiheadAttention",
    "torch.nn.functional.multi_head_attention_forward",
    "tantra_lib.MultiHeadAttention",
))
def check_MultiHeadAttention(MultiHeadAttention, hidden=False):
    cls = MultiHeadAttention
    expect(isinstance(cls, type), "`MultiHeadAttention` should be a class (pass the class, not an instance).",
           "class MultiHeadAttention(nn.Module): ...")
    dev = get_device()
    x = _randn(2, 5, 16, seed=131)
    causal = torch.ones(5, 5, dtype=torch.bool, device=dev).tril()
    pad = torch.tensor([[True] * 5, [True] * 3 + [False] * 2], device=dev)[:, None, None, :]  # (B, 1, 1, T)
    cases = [(x, None, "x (2, 5, 16)"), (x, causal, "x with a causal mask"), (x, pad, "x with a padding mask")]
    _check_mha_config(cls, 16, 4, True, torch.float32, 132, cases, "")
    if hidden:
        x24 = _randn(3, 7, 24, seed=133)
        c7 = torch.ones(7, 7, dtype=torch.bool, device=dev).tril()
        _check_mha_config(cls, 24, 6, True, torch.float32, 134, [(x24, c7, "x (3, 7, 24) with a causal mask"),
                                                                 (_randn(3, 24, 7, seed=135).transpose(1, 2), None,
                                                                  "a non-contiguous x")], "")
        _check_mha_config(cls, 8, 2, False, torch.float32, 136, [(_randn(2, 1, 8, seed=137), None, "t = 1")], "")
        _check_mha_config(cls, 8, 1, True, torch.float32, 138, [(_randn(2, 4, 8, seed=139), None, "x (2, 4, 8)")],
                          " (one head)")
        _check_mha_config(cls, 8, 8, True, torch.float32, 140, [(_randn(2, 4, 8, seed=141), None, "x (2, 4, 8)")],
                          " (d_head = 1)")
        _check_mha_config(cls, 16, 4, True, torch.float64, 142, [(_randn(2, 6, 16, seed=143), None, "x")], " (float64)")
        _check_mha_config(cls, 16, 2, True, torch.bfloat16, 144,
                          [(_randn(2, 6, 16, seed=145), torch.ones(6, 6, dtype=torch.bool, device=dev).tril(),
                            "x with a causal mask")], " (bfloat16)")
