"""The checks of lesson 10_pretrained reject plausible wrong answers, naming the mistake, and
accept other correct ones. The implementations below stand for learner code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tantra_lib.pretrained as lib
from tantra_lib.checks import CheckFailed
from tantra_lib.checks.pretrained import check_cosine_similarity_matrix, check_load_bert_layer, check_mean_pool

# ----------------------------------------------------------------------------- mean_pool


def pool_masked_sum(hidden, attention_mask):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def pool_einsum_where(hidden, attention_mask):
    m = attention_mask.bool()
    total = torch.einsum("btd,bt->bd", hidden, m.to(hidden.dtype))
    count = m.sum(dim=1, keepdim=True)
    return torch.where(count > 0, total / count.clamp(min=1).to(hidden.dtype), torch.zeros_like(total))


def pool_loop(hidden, attention_mask):
    rows = []
    for h, m in zip(hidden, attention_mask):
        keep = h[m.bool()]
        rows.append(keep.mean(0) if len(keep) else torch.zeros_like(h[0]))
    return torch.stack(rows)


def pool_over_padding(hidden, attention_mask):
    return hidden.mean(dim=1)


def pool_padded_length(hidden, attention_mask):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / hidden.shape[1]


def pool_no_clamp(hidden, attention_mask):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1)


def pool_cls(hidden, attention_mask):
    return hidden[:, 0]


def pool_no_divide(hidden, attention_mask):
    return (hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)


def pool_first_n(hidden, attention_mask):
    n = attention_mask.sum(dim=1).clamp(min=1)
    return torch.stack([hidden[i, : int(n[i])].mean(0) for i in range(hidden.shape[0])])


def pool_feature_dim(hidden, attention_mask):
    return (hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)).mean(dim=-1)


def pool_shortcut(hidden, attention_mask):
    return lib.mean_pool(hidden, attention_mask)


def pool_todo(hidden, attention_mask):
    raise NotImplementedError()


@pytest.mark.parametrize("impl", [pool_masked_sum, pool_einsum_where, pool_loop])
def test_mean_pool_accepts_correct(impl, device):
    assert check_mean_pool(impl, hidden=True, quiet=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (pool_over_padding, "padding"),
    (pool_padded_length, "padded length"),
    (pool_no_clamp, "clamp"),
    (pool_cls, "[CLS]"),
    (pool_no_divide, "did not divide"),
    (pool_feature_dim, "features"),
])
def test_mean_pool_names_the_mistake(impl, keyword, device):
    with pytest.raises(CheckFailed) as e:
        check_mean_pool(impl, quiet=True)
    assert e.value.result.status == "failed"
    assert keyword in e.value.result.message


def test_mean_pool_padding_assumed_at_the_end():
    with pytest.raises(CheckFailed) as e:
        check_mean_pool(pool_first_n, hidden=True, quiet=True)
    assert "padding is at the end" in e.value.result.message


def test_mean_pool_shortcut_and_todo():
    with pytest.raises(CheckFailed) as e:
        check_mean_pool(pool_shortcut, quiet=True)
    assert e.value.result.status == "shortcut"
    with pytest.raises(CheckFailed) as e:
        check_mean_pool(pool_todo, quiet=True)
    assert e.value.result.status == "not_attempted"


# ----------------------------------------------------------------------------- load_bert_layer

QKV = ("query", "key", "value")
PAIRS = {  # our parameter -> checkpoint name after the prefix
    "attn.out_proj": "attention.output.dense",
    "ln1": "attention.output.LayerNorm",
    "ffn.fc_in": "intermediate.dense",
    "ffn.fc_out": "output.dense",
    "ln2": "output.LayerNorm",
}


def _fill(block, sd, prefix, order=QKV, pairs=None, transpose=False):
    pairs = pairs or PAIRS
    params = dict(block.named_parameters())
    with torch.no_grad():
        for w in ("weight", "bias"):
            parts = [sd[f"{prefix}attention.self.{n}.{w}"] for n in order]
            if transpose and w == "weight":
                parts = [p.t() for p in parts]
            params[f"attn.qkv_proj.{w}"].copy_(torch.cat(parts, dim=0))
            for ours, theirs in pairs.items():
                params[f"{ours}.{w}"].copy_(sd[f"{prefix}{theirs}.{w}"])


def load_copy(block, sd, prefix):
    _fill(block, sd, prefix)
    return block


def load_state_dict_way(block, sd, prefix):
    new = {}
    for w in ("weight", "bias"):
        new[f"attn.qkv_proj.{w}"] = torch.cat([sd[prefix + f"attention.self.{n}.{w}"] for n in QKV])
        for ours, theirs in PAIRS.items():
            new[f"{ours}.{w}"] = sd[f"{prefix}{theirs}.{w}"]
    block.load_state_dict(new)


def load_data_assign(block, sd, prefix):
    dev = block.ln1.weight.device
    q, k, v = (sd[prefix + f"attention.self.{n}.weight"] for n in QKV)
    block.attn.qkv_proj.weight.data = torch.vstack([q, k, v]).to(dev)
    block.attn.qkv_proj.bias.data = torch.hstack([sd[prefix + f"attention.self.{n}.bias"] for n in QKV]).to(dev)
    for ours, theirs in PAIRS.items():
        mod = block.get_submodule(ours)
        mod.weight.data = sd[f"{prefix}{theirs}.weight"].clone().to(dev)
        mod.bias.data = sd[f"{prefix}{theirs}.bias"].clone().to(dev)


def load_kqv(block, sd, prefix):
    _fill(block, sd, prefix, order=("key", "query", "value"))


def load_transposed(block, sd, prefix):
    _fill(block, sd, prefix, transpose=True)


def load_ln_swapped(block, sd, prefix):
    _fill(block, sd, prefix, pairs=dict(PAIRS, ln1="output.LayerNorm", ln2="attention.output.LayerNorm"))


def load_layer0(block, sd, prefix):
    _fill(block, sd, prefix.replace(prefix.rstrip(".").rsplit(".", 1)[1] + ".", "0."))


def load_skip_ln(block, sd, prefix):
    _fill(block, sd, prefix, pairs={k: v for k, v in PAIRS.items() if not k.startswith("ln")})


def load_modifies_checkpoint(block, sd, prefix):
    _fill(block, sd, prefix)
    sd[prefix + "output.dense.bias"].zero_()


def load_shortcut(block, sd, prefix):
    mapped = lib.map_bert_state_dict({k.replace(prefix, "encoder.layer.0."): v for k, v in sd.items()
                                      if k.startswith(prefix)} | {"embeddings.word_embeddings.weight": torch.zeros(1)},
                                     1)
    block.load_state_dict({k[len("blocks.0."):]: v for k, v in mapped.items() if k.startswith("blocks.0.")})


def load_todo(block, sd, prefix):
    raise NotImplementedError()


@pytest.mark.parametrize("impl", [load_copy, load_state_dict_way, load_data_assign])
def test_load_bert_layer_accepts_correct(impl, device):
    assert check_load_bert_layer(impl, hidden=True, quiet=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (load_kqv, "wrong order"),
    (load_transposed, "transposed"),
    (load_ln_swapped, "ln1 and ln2 are mixed up"),
    (load_layer0, "another layer"),
    (load_skip_ln, "not filled"),
    (load_modifies_checkpoint, "in place"),
])
def test_load_bert_layer_names_the_mistake(impl, keyword):
    with pytest.raises(CheckFailed) as e:
        check_load_bert_layer(impl, quiet=True)
    assert e.value.result.status == "failed"
    assert keyword in e.value.result.message


def test_load_bert_layer_shortcut_and_todo():
    with pytest.raises(CheckFailed) as e:
        check_load_bert_layer(load_shortcut, quiet=True)
    assert e.value.result.status == "shortcut"
    with pytest.raises(CheckFailed) as e:
        check_load_bert_layer(load_todo, quiet=True)
    assert e.value.result.status == "not_attempted"


# ----------------------------------------------------------------------------- cosine_similarity_matrix


def cos_normalize_matmul(a, b):
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def cos_einsum(a, b):
    na = a.pow(2).sum(-1).sqrt().clamp(min=1e-8)
    nb = b.pow(2).sum(-1).sqrt().clamp(min=1e-8)
    return torch.einsum("nd,md->nm", a, b) / (na[:, None] * nb[None, :])


def cos_loop(a, b):
    out = torch.zeros(a.shape[0], b.shape[0], dtype=a.dtype, device=a.device)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            denom = torch.clamp(a[i].norm(), min=1e-8) * torch.clamp(b[j].norm(), min=1e-8)
            out[i, j] = (a[i] * b[j]).sum() / denom
    return out


def cos_dot(a, b):
    return a @ b.T


def cos_wrong_dim(a, b):
    return (a / a.norm(dim=0, keepdim=True)) @ (b / b.norm(dim=0, keepdim=True)).T


def cos_only_a(a, b):
    return (a / a.norm(dim=-1, keepdim=True)) @ b.T


def cos_distance(a, b):
    return 1 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def cos_no_eps(a, b):
    return (a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).T


def cos_swapped(a, b):
    return F.normalize(b, dim=-1) @ F.normalize(a, dim=-1).T


def cos_shortcut(a, b):
    return F.cosine_similarity(a[:, None], b[None], dim=-1)


def cos_todo(a, b):
    raise NotImplementedError()


@pytest.mark.parametrize("impl", [cos_normalize_matmul, cos_einsum, cos_loop])
def test_cosine_accepts_correct(impl, device):
    assert check_cosine_similarity_matrix(impl, hidden=True, quiet=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (cos_dot, "not normalising"),
    (cos_wrong_dim, "wrong dim"),
    (cos_only_a, "normalised a but not b"),
    (cos_distance, "distance"),
    (cos_no_eps, "NaN"),
    (cos_swapped, "swapped"),
])
def test_cosine_names_the_mistake(impl, keyword):
    with pytest.raises(CheckFailed) as e:
        check_cosine_similarity_matrix(impl, quiet=True)
    assert e.value.result.status == "failed"
    assert keyword in e.value.result.message


def test_cosine_shortcut_and_todo():
    with pytest.raises(CheckFailed) as e:
        check_cosine_similarity_matrix(cos_shortcut, quiet=True)
    assert e.value.result.status == "shortcut"
    with pytest.raises(CheckFailed) as e:
        check_cosine_similarity_matrix(cos_todo, quiet=True)
    assert e.value.result.status == "not_attempted"
