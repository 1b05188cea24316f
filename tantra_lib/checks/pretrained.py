"""Checks of lesson 10_pretrained: ``mean_pool``, ``load_bert_layer``, ``cosine_similarity_matrix``.

``mean_pool`` is compared with the masked mean written out in double precision, after trying
the usual mistakes (padding averaged in, division by the padded length, no clamp on the count,
the [CLS] vector, padding assumed at the end). ``load_bert_layer`` fills a fresh post-LN
``TransformerBlock`` from a random BERT-named checkpoint; each parameter is compared with what
it should hold (naming q/k/v in the wrong order, transposed weights, ln1/ln2 swapped, the wrong
layer, a parameter left untouched), then the block's output is compared with a BERT layer
written directly in torch.nn.functional. ``cosine_similarity_matrix`` is compared with
F.cosine_similarity on every pair. Tested in tests/test_checks_pretrained.py.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..device import get_device
from ._core import Mistake, call, compare, exercise, expect

__all__ = ["check_mean_pool", "check_load_bert_layer", "check_cosine_similarity_matrix"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32, device=None):
    x = torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale
    return x.to(dtype).to(device if device is not None else get_device())


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2


# ----------------------------------------------------------------------------- mean_pool

_POOL_HINT = ("mean_pool = Σ_t mask_t · hidden_t / max(Σ_t mask_t, tiny): multiply by the mask (B, T, 1), sum over "
              "the tokens (dim=1), divide by the number of real tokens, clamped so it is never 0.")


def _pool_reference(hidden, mask):
    m = mask.to(torch.float64).unsqueeze(-1)  # (B, T, 1)
    return (hidden.double() * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _pool_mistakes(hidden, mask):
    h = hidden.double()
    m = mask.to(torch.float64).unsqueeze(-1)
    count = m.sum(1).clamp_min(1e-9)
    t = h.shape[1]
    first_n = torch.stack([h[i, : max(int(mask[i].sum()), 1)].mean(0) for i in range(h.shape[0])])
    return [
        (h.mean(1), "averaged over every position, padding included: pooling over padding makes a sentence's "
         "vector depend on how long the other sentences in its batch are.",
         "Multiply the hidden states by the mask before summing, and divide by the number of real tokens."),
        ((h * m).sum(1) / t, "divided by the padded length T instead of the number of real tokens: short "
         "sentences in a batch come out shrunk.", "Divide by mask.sum(dim=1) (per row), not by hidden.shape[1]."),
        (h.sum(1) / count, "summed over the padding too (the mask only entered the count).",
         "Zero the padded positions first: hidden * mask.unsqueeze(-1)."),
        ((h * m).sum(1), "summed the real tokens but did not divide by their number.", _POOL_HINT),
        (h[:, 0], "took the first ([CLS]) token's vector instead of the mean over the real tokens.", _POOL_HINT),
        (first_n, "averaged the first n positions of each row, assuming the padding is at the end; "
         "use the mask itself, wherever its zeros are.", "Multiply by the mask instead of slicing by lengths."),
    ]


@exercise("mean_pool", lesson="10_pretrained", forbids=("tantra_lib.mean_pool", "torch.masked.mean"))
def check_mean_pool(mean_pool, hidden=False):
    expect(callable(mean_pool), "`mean_pool` is not a function.", "Define `def mean_pool(hidden, attention_mask):`.")
    dev = get_device()

    def lengths_mask(lengths, t, dtype=torch.long, left=False):
        pos = torch.arange(t)
        rows = [(pos >= t - n) if left else (pos < n) for n in lengths]
        return torch.stack(rows).to(dtype).to(dev)

    cases = [
        (_randn(3, 6, 8, seed=1), lengths_mask([6, 3, 1], 6), "hidden (3, 6, 8) with 6, 3 and 1 real tokens"),
        (_randn(2, 5, 4, seed=2, scale=10), lengths_mask([2, 5], 5, dtype=torch.bool),
         "a bool attention_mask"),
        (_randn(3, 4, 6, seed=3), lengths_mask([4, 2, 0], 4), "a batch with a row that has no real token"),
    ]
    if hidden:
        cases += [
            (_randn(2, 7, 5, seed=4), lengths_mask([3, 7], 7, left=True), "padding on the left"),
            (_randn(4, 9, 16, seed=5, dtype=torch.float64), lengths_mask([9, 1, 4, 8], 9), "float64 hidden"),
            (_randn(3, 5, 8, seed=6, dtype=torch.bfloat16), lengths_mask([5, 2, 3], 5), "bfloat16 hidden"),
            (_randn(8, 6, 2, seed=7).transpose(0, 2), lengths_mask([6, 1], 6), "a non-contiguous hidden"),
            (_randn(1, 1, 3, seed=8), lengths_mask([1], 1), "one sentence of one token"),
        ]
    for h, mask, label in cases:
        out = call(mean_pool, h, mask, name="mean_pool")
        expected = _pool_reference(h, mask).to(h.dtype)
        what = f"mean_pool({label})"
        b, t, d = h.shape
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (b, t) and (t, d) != (d, t):
            raise Mistake(f"{what} has shape {(b, t)}: you averaged over the features (dim=-1), not over the "
                          "tokens.", "The tokens are dim 1 of hidden (B, T, d_model); the result is (B, d_model).")
        empty = mask.sum(1) == 0
        if isinstance(out, torch.Tensor) and out.shape == expected.shape and bool(empty.any()):
            rows = out[empty]
            expect(not bool(torch.isnan(rows).any()),
                   f"{what}: the row without real tokens gives NaN (0/0): you forgot to clamp the count.",
                   "Divide by mask.sum(dim=1).clamp(min=1e-9) (what sentence-transformers does), so an empty row "
                   "comes out as zeros.")
        compare(out, expected, what=what, hint=_POOL_HINT,
                mistakes=_pool_mistakes(h, mask) if h.dtype == torch.float32 else (),
                atol=_tol(h.dtype), rtol=_tol(h.dtype))


# ----------------------------------------------------------------------------- load_bert_layer

_QKV = ("query", "key", "value")
_LOAD_HINT = ("qkv_proj.weight = cat([query.weight, key.weight, value.weight], dim=0) (same for the biases); "
              "attention.output.dense -> attn.out_proj, attention.output.LayerNorm -> ln1, intermediate.dense -> "
              "ffn.fc_in, output.dense -> ffn.fc_out, output.LayerNorm -> ln2. Copy with param.copy_(tensor) "
              "under torch.no_grad().")

# our parameter -> checkpoint name after the layer prefix (qkv_proj is stacked from three)
_TARGETS = {
    "attn.out_proj.weight": "attention.output.dense.weight",
    "attn.out_proj.bias": "attention.output.dense.bias",
    "ln1.weight": "attention.output.LayerNorm.weight",
    "ln1.bias": "attention.output.LayerNorm.bias",
    "ffn.fc_in.weight": "intermediate.dense.weight",
    "ffn.fc_in.bias": "intermediate.dense.bias",
    "ffn.fc_out.weight": "output.dense.weight",
    "ffn.fc_out.bias": "output.dense.bias",
    "ln2.weight": "output.LayerNorm.weight",
    "ln2.bias": "output.LayerNorm.bias",
}


def _fake_checkpoint(d, d_ff, n_layers, seed, prefix="", dtype=torch.float32):
    """A random BERT-named state dict (on the CPU, as a checkpoint loads); LayerNorm weights are
    random too so that every parameter differs from every other."""
    g = _gen(seed)

    def r(*shape, scale=0.3, offset=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)

    sd = {prefix + "embeddings.word_embeddings.weight": r(50, d)}
    for i in range(n_layers):
        p = f"{prefix}encoder.layer.{i}."
        for n in _QKV:
            sd[p + f"attention.self.{n}.weight"] = r(d, d)
            sd[p + f"attention.self.{n}.bias"] = r(d, scale=0.1)
        sd[p + "attention.output.dense.weight"] = r(d, d)
        sd[p + "attention.output.dense.bias"] = r(d, scale=0.1)
        sd[p + "attention.output.LayerNorm.weight"] = r(d, scale=0.2, offset=1.0)
        sd[p + "attention.output.LayerNorm.bias"] = r(d, scale=0.1)
        sd[p + "intermediate.dense.weight"] = r(d_ff, d)
        sd[p + "intermediate.dense.bias"] = r(d_ff, scale=0.1)
        sd[p + "output.dense.weight"] = r(d, d_ff, scale=0.15)
        sd[p + "output.dense.bias"] = r(d, scale=0.1)
        sd[p + "output.LayerNorm.weight"] = r(d, scale=0.2, offset=1.0)
        sd[p + "output.LayerNorm.bias"] = r(d, scale=0.1)
    return sd


def _bert_layer_reference(x, sd, p, n_heads, eps, key_mask):
    """One BERT layer from the checkpoint's tensors, in torch.nn.functional. x: (B, T, d)."""
    b, t, d = x.shape
    w = {k[len(p):]: v.to(x.device, torch.float64) for k, v in sd.items() if k.startswith(p)}
    x = x.double()

    def heads(n):
        y = F.linear(x, w[f"attention.self.{n}.weight"], w[f"attention.self.{n}.bias"])
        return y.view(b, t, n_heads, d // n_heads).transpose(1, 2)  # (B, T, d) -> (B, H, T, D)

    a = F.scaled_dot_product_attention(heads("query"), heads("key"), heads("value"), attn_mask=key_mask)
    a = a.transpose(1, 2).reshape(b, t, d)  # (B, H, T, D) -> (B, T, d)
    a = F.linear(a, w["attention.output.dense.weight"], w["attention.output.dense.bias"])
    x = F.layer_norm(x + a, (d,), w["attention.output.LayerNorm.weight"], w["attention.output.LayerNorm.bias"], eps)
    f = F.linear(F.gelu(F.linear(x, w["intermediate.dense.weight"], w["intermediate.dense.bias"])),
                 w["output.dense.weight"], w["output.dense.bias"])
    return F.layer_norm(x + f, (d,), w["output.LayerNorm.weight"], w["output.LayerNorm.bias"], eps)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.detach().cpu().double(), b.detach().cpu().double(),
                                                      atol=1e-6, rtol=1e-5))


def _diagnose_param(name, got, before, sd, p, p_other, label):
    """Raise a Mistake naming what `got` holds instead of the expected checkpoint tensor."""
    what = f"load_bert_layer({label}): block.{name}"
    if name.startswith("attn.qkv_proj."):
        w = name.rsplit(".", 1)[1]
        parts = {n: sd[p + f"attention.self.{n}.{w}"] for n in _QKV}
        expected = torch.cat([parts[n] for n in _QKV], 0)
        if _same(got, expected):
            return
        for order in itertools.permutations(_QKV):
            if order != _QKV and _same(got, torch.cat([parts[n] for n in order], 0)):
                raise Mistake(f"{what} holds {', '.join(order)} stacked in that order: q/k/v are stacked in the "
                              "wrong order.",
                              "qkv_proj's rows are laid out [q; k; v]: cat([query, key, value], dim=0).")
        if w == "weight":
            if _same(got, torch.cat([parts[n].t() for n in _QKV], 0)):
                raise Mistake(f"{what} holds the transposed query/key/value weights: weights transposed.",
                              "BERT's Linear weights are (out_features, in_features) like nn.Linear's: copy them "
                              "as they are, no .t().")
            if _same(got, torch.cat([parts[n] for n in _QKV], 1)):
                raise Mistake(f"{what}: q/k/v were concatenated along dim 1 (columns) instead of stacked along "
                              "dim 0 (rows).", "torch.cat([...], dim=0) gives (3 d_model, d_model).")
        if p_other is not None and _same(got, torch.cat([sd[p_other + f"attention.self.{n}.{w}"] for n in _QKV], 0)):
            raise Mistake(f"{what} holds another layer's q/k/v: use the `prefix` argument for every key.",
                          "Build every key as prefix + 'attention.self.query.weight', etc.")
        if _same(got, before):
            raise Mistake(f"{what} was not filled (it still holds its random initial values).", _LOAD_HINT)
        raise Mistake(f"{what} does not hold cat([query, key, value], dim=0) of the checkpoint's layer.", _LOAD_HINT)

    key = _TARGETS[name]
    expected = sd[p + key]
    if _same(got, expected):
        return
    if got.ndim == 2 and _same(got, expected.t()):
        raise Mistake(f"{what} holds {key} transposed: weights transposed.",
                      "BERT's Linear weights are (out_features, in_features) like nn.Linear's: no .t() needed.")
    if name.startswith(("ln1.", "ln2.")):
        other = "ln2" if name.startswith("ln1") else "ln1"
        if _same(got, sd[p + _TARGETS[other + name[3:]]]):
            raise Mistake(f"{what} holds {_TARGETS[other + name[3:]]}: ln1 and ln2 are mixed up. In a post-LN "
                          "BERT layer, attention.output.LayerNorm comes after the attention residual (ln1) and "
                          "output.LayerNorm after the feed-forward residual (ln2).",
                          "ln1 <- attention.output.LayerNorm, ln2 <- output.LayerNorm.")
    for other_name, other_key in _TARGETS.items():
        if other_name != name and _same(got, sd[p + other_key]):
            raise Mistake(f"{what} holds {other_key}, which belongs in block.{other_name}.", _LOAD_HINT)
    if p_other is not None and _same(got, sd[p_other + key]):
        raise Mistake(f"{what} holds another layer's {key}: use the `prefix` argument for every key.",
                      "Build every key as prefix + name.")
    if _same(got, before):
        raise Mistake(f"{what} was not filled (it still holds its initial values).", _LOAD_HINT)
    raise Mistake(f"{what} does not hold the checkpoint's {p + key}.", _LOAD_HINT)


def _check_one_load(load_bert_layer, d, n_heads, d_ff, n_layers, layer, seed, label, prefix="",
                    dtype=torch.float32):
    from ..block import TransformerBlock

    dev = get_device()
    sd = _fake_checkpoint(d, d_ff, n_layers, seed, prefix=prefix, dtype=dtype)
    p = f"{prefix}encoder.layer.{layer}."
    p_other = f"{prefix}encoder.layer.{(layer + 1) % n_layers}." if n_layers > 1 else None
    torch.manual_seed(seed)  # only the block's throw-away initial values depend on it
    block = TransformerBlock(d, n_heads, d_ff, norm_first=False, eps=1e-12).to(dev, dtype)
    before = {k: v.detach().clone() for k, v in block.state_dict().items()}
    sd_copy = {k: v.clone() for k, v in sd.items()}
    call(load_bert_layer, block, sd, p, name="load_bert_layer")
    for k, v in sd.items():
        expect(torch.equal(v, sd_copy[k]), f"load_bert_layer({label}) modified the checkpoint tensor {k} in place.",
               "Read from the state dict; write only into the block's parameters.")
    params = dict(block.named_parameters())
    for name in ["attn.qkv_proj.weight", "attn.qkv_proj.bias", *_TARGETS]:
        expect(name in params, f"load_bert_layer({label}): block.{name} is no longer a parameter of the block.",
               "Copy into the existing parameters (param.copy_(tensor) under torch.no_grad()) instead of "
               "replacing them.")
        got = params[name]
        expect(got.device.type == dev.type,
               f"load_bert_layer({label}): block.{name} moved to {got.device}; the block lives on {dev}.",
               "param.copy_(tensor) copies across devices and keeps the parameter where it is; "
               "nn.Parameter(sd[key]) would move it to the checkpoint's device.")
        _diagnose_param(name, got, before[name], sd, p, p_other, label)
    # the filled block must compute a BERT layer (padding masked as keys)
    x = _randn(2, 5, d, seed=seed + 100, dtype=dtype)
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool, device=dev)[:, None, None, :]
    with torch.no_grad():
        out = block(x, mask=key_mask)
    expected = _bert_layer_reference(x, sd, p, n_heads, 1e-12, key_mask).to(dtype)
    compare(out, expected, what=f"the filled block's output ({label})", hint=_LOAD_HINT, atol=1e-4, rtol=1e-4)


@exercise("load_bert_layer", lesson="10_pretrained",
          forbids=("tantra_lib.load_bert_layer", "tantra_lib.map_bert_state_dict"))
def check_load_bert_layer(load_bert_layer, hidden=False):
    expect(callable(load_bert_layer), "`load_bert_layer` is not a function.",
           "Define `def load_bert_layer(block, sd, prefix):`.")
    _check_one_load(load_bert_layer, d=16, n_heads=4, d_ff=40, n_layers=2, layer=1, seed=1,
                    label="layer 1 of a 2-layer checkpoint, d_model 16")
    if hidden:
        _check_one_load(load_bert_layer, d=24, n_heads=6, d_ff=48, n_layers=3, layer=0, seed=2,
                        label="'bert.'-prefixed keys, layer 0", prefix="bert.")
        _check_one_load(load_bert_layer, d=8, n_heads=2, d_ff=32, n_layers=1, layer=0, seed=3,
                        label="float64 weights", dtype=torch.float64)


# ----------------------------------------------------------------------------- cosine_similarity_matrix

_COS_HINT = ("cos(a_i, b_j) = a_i · b_j / (|a_i| |b_j|): divide every row of a and of b by its own length "
             "(norm over dim=-1, keepdim=True, clamped away from 0), then a_n @ b_n.T.")


def _cos_reference(a, b):
    return F.cosine_similarity(a.double()[:, None, :], b.double()[None, :, :], dim=-1, eps=1e-8)


def _cos_mistakes(a, b):
    a, b = a.double(), b.double()
    an = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    bn = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    out = [
        (a @ b.T, "returned raw dot products: not normalising, so long vectors look similar to everything.",
         _COS_HINT),
        (an @ b.T, "normalised a but not b.", _COS_HINT),
        (a @ bn.T, "normalised b but not a.", _COS_HINT),
        (1 - an @ bn.T, "returned the cosine distance 1 - cos, not the similarity.", _COS_HINT),
        ((a / a.norm()) @ (b / b.norm()).T, "divided by the norm of the whole matrix instead of each row's norm.",
         "Take the norm along dim=-1 with keepdim=True."),
        (a @ b.T / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True).T) ** 2,
         "divided by the squared norms.", _COS_HINT),
    ]
    if a.shape[0] > 1 and b.shape[0] > 1:
        out.append(((a / a.norm(dim=0, keepdim=True)) @ (b / b.norm(dim=0, keepdim=True)).T,
                    "normalised along the wrong dim (each feature column over the rows, dim=0) instead of each "
                    "vector (dim=-1).", "Use x.norm(dim=-1, keepdim=True): one length per row."))
    return out


@exercise("cosine_similarity_matrix", lesson="10_pretrained",
          forbids=("torch.nn.functional.cosine_similarity", "torch.cosine_similarity", "torch.nn.CosineSimilarity",
                   "tantra_lib.cosine_similarity_matrix", "tantra_lib.semantic_search"))
def check_cosine_similarity_matrix(cosine_similarity_matrix, hidden=False):
    expect(callable(cosine_similarity_matrix), "`cosine_similarity_matrix` is not a function.",
           "Define `def cosine_similarity_matrix(a, b):`.")
    dev = get_device()

    def rows(n, d, seed, dtype=torch.float32):
        x = _randn(n, d, seed=seed, dtype=torch.float64)
        lengths = torch.linspace(0.2, 5.0, n, dtype=torch.float64, device=dev)[:, None]  # very different norms
        return (x * lengths).to(dtype)

    zero = rows(3, 8, 13)
    zero[1] = 0
    cases = [
        (rows(4, 8, 11), rows(5, 8, 12), "a (4, 8) and b (5, 8)"),
        (zero, rows(2, 8, 14), "an a with a zero row"),
        (rows(3, 6, 15), rows(3, 6, 15) * 2, "b = 2 a"),
    ]
    if hidden:
        cases += [
            (rows(6, 384, 16, torch.float64), rows(9, 384, 17, torch.float64), "float64 vectors of size 384"),
            (rows(1, 5, 18), rows(7, 5, 19), "a single query row"),
            (rows(8, 4, 20).T.contiguous().T, rows(10, 8, 21)[:, ::2], "non-contiguous inputs"),
            (rows(5, 32, 22, torch.bfloat16), rows(4, 32, 23, torch.bfloat16), "bfloat16 vectors"),
            (rows(3, 16, 24) * 1e3, rows(4, 16, 25) * 1e-3, "vectors of very different scales"),
        ]
    for a, b, label in cases:
        out = call(cosine_similarity_matrix, a, b, name="cosine_similarity_matrix")
        expected = _cos_reference(a, b).to(a.dtype)
        what = f"cosine_similarity_matrix({label})"
        n, m = a.shape[0], b.shape[0]
        if isinstance(out, torch.Tensor) and n != m and tuple(out.shape) == (m, n):
            raise Mistake(f"{what} has shape {(m, n)}: rows and columns swapped.",
                          "Row i is a's i-th vector, column j is b's j-th: a_n @ b_n.T gives (N, M).")
        zero_rows = (a.double().norm(dim=-1) == 0)
        if isinstance(out, torch.Tensor) and out.shape == expected.shape and bool(zero_rows.any()):
            expect(not bool(torch.isnan(out[zero_rows]).any()),
                   f"{what}: a zero vector gives NaN (0/0).",
                   "Clamp each norm away from zero (norm.clamp(min=1e-8)) so a zero vector has similarity 0.")
        compare(out, expected, what=what, hint=_COS_HINT,
                mistakes=_cos_mistakes(a, b) if a.dtype == torch.float32 else (),
                atol=_tol(a.dtype), rtol=_tol(a.dtype))
