"""all-MiniLM-L6-v2 on tantra_lib's blocks gives the published model's embeddings.

The reference is sentence-transformers running the same files (extracted from the package's
model.zip into a cache folder); tantra_lib reads the zip itself and never imports it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F

from tantra_lib.pretrained import (
    BertEncoder,
    CheckpointError,
    cosine_similarity_matrix,
    load_bert_layer,
    load_minilm,
    map_bert_state_dict,
    mean_pool,
    minilm_model_dir,
    minilm_zip_path,
    read_safetensors,
    semantic_search,
    shakespeare_lines,
)

LONG = " ".join(["Now is the winter of our discontent made glorious summer by this sun of York;"] * 30)
SENTENCES = [
    "Hi",
    "",
    "Thunder.",
    "To be, or not to be, that is the question.",
    "A father grieves for his dead son.",
    "My kingdom for a horse!",
    "The quick brown fox jumps over the lazy dog.",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "uncharacteristically antidisestablishmentarianism",
    "Tokenizers split rare words into word-pieces: ##ing, ##ed.",
    "¿Dónde está la biblioteca? — Ελληνικά, русский, 日本語, emoji 🎭",
    "1234567890 3.14159 e=mc^2",
    "ALL CAPS SHOUTING SENTENCE",
    "    leading and trailing spaces    ",
    "a " * 100,
    "The course of true love never did run smooth.",
    "What's in a name? That which we call a rose by any other name would smell as sweet.",
    "I think, therefore I am.",
    "Brevity is the soul of wit.",
    "Good night, good night! Parting is such sweet sorrow.",
    "The fault, dear Brutus, is not in our stars, but in ourselves.",
    "Out, damned spot! out, I say!",
    "If music be the food of love, play on.",
    "The lady doth protest too much, methinks.",
    "Some are born great, some achieve greatness, and some have greatness thrust upon 'em.",
    "We are such stuff as dreams are made on, and our little life is rounded with a sleep.",
    "How do I reset my password?",
    "Stock markets fell sharply on Monday.",
    "Neural networks learn representations.",
    "x",
    LONG,  # far past 256 word pieces: truncated
    LONG + " and then a tail that only matters if truncation is missing",
]


@pytest.fixture(scope="module")
def encoders():
    cache = {}

    def get(device: torch.device):
        if device.type not in cache:
            cache[device.type] = load_minilm(device=device)
        return cache[device.type]

    return get


@pytest.fixture(scope="module")
def batch_embeddings(encoders):
    """SENTENCES encoded in one padded batch, once per device."""
    cache = {}

    def get(device: torch.device):
        if device.type not in cache:
            cache[device.type] = encoders(device).encode(SENTENCES, batch_size=len(SENTENCES))
        return cache[device.type]

    return get


@pytest.fixture(scope="module")
def reference_embeddings():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_model_dir()), device="cpu")
    assert st.max_seq_length == 256
    ref = st.encode(SENTENCES, normalize_embeddings=True, convert_to_tensor=True, batch_size=64)
    return ref.float().cpu()


@pytest.fixture(scope="module")
def checkpoint():
    with zipfile.ZipFile(minilm_zip_path()) as z:
        return read_safetensors(z.read("model.safetensors"))


def test_parity_with_sentence_transformers(encoders, batch_embeddings, reference_embeddings, device):
    enc = encoders(device)
    ids = enc.tokenize(SENTENCES)["input_ids"]
    assert ids.shape[1] == 256  # the long sentences are cut at 256 word pieces, and the batch is padded
    out = batch_embeddings(device)  # one padded batch
    assert out.shape == (len(SENTENCES), 384) and out.dtype == torch.float32 and out.device.type == device.type
    torch.testing.assert_close(out.cpu(), reference_embeddings, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1).cpu(), torch.ones(len(SENTENCES)), atol=1e-5, rtol=0)
    # truncation: what comes after token 256 does not matter
    torch.testing.assert_close(out[-1], out[-2], atol=1e-6, rtol=0)


def test_alone_equals_in_padded_batch(encoders, batch_embeddings, device):
    enc = encoders(device)
    batch = batch_embeddings(device)
    for i in (0, 3, 7, 14, len(SENTENCES) - 1):
        alone = enc.encode([SENTENCES[i]])
        torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)
    # and how the sentences are grouped into batches does not change anything
    short = SENTENCES[:-2]
    torch.testing.assert_close(enc.encode(short, batch_size=5), batch[:-2], atol=1e-5, rtol=0)


def test_unnormalised_is_the_masked_mean(encoders):
    enc = encoders(torch.device("cpu"))
    raw = enc.encode(SENTENCES[:6], normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(F.normalize(raw, dim=-1), enc.encode(SENTENCES[:6]), atol=1e-6, rtol=0)


def test_lower_precision_stays_close(reference_embeddings):
    enc = load_minilm(device="cpu", dtype=torch.bfloat16)
    out = enc.encode(SENTENCES[:8])
    assert out.dtype == torch.float32
    cos = (out * reference_embeddings[:8]).sum(-1)
    assert bool((cos > 0.98).all()), cos


def test_truncated_safetensors_gives_a_clear_error(tmp_path):
    zp = minilm_zip_path()
    with zipfile.ZipFile(zp) as z:
        data = z.read("model.safetensors")
        for name in ("config.json", "sentence_bert_config.json", "tokenizer.json"):
            (tmp_path / name).write_bytes(z.read(name))
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(data[:100])
    (tmp_path / "model.safetensors").write_bytes(data[:-1000])
    with pytest.raises(CheckpointError, match="truncated.*reinstall"):
        load_minilm(device="cpu", path=tmp_path)


def test_missing_layer_gives_a_clear_error(checkpoint):
    broken = {k: v for k, v in checkpoint.items() if not k.startswith("encoder.layer.5.")}
    with pytest.raises(CheckpointError) as e:
        map_bert_state_dict(broken, n_layers=6)
    msg = str(e.value)
    assert "missing keys (16)" in msg and "encoder.layer.5.attention.self.query.weight" in msg
    # a checkpoint with more layers than asked for: its extra layer is listed as unexpected
    with pytest.raises(CheckpointError) as e:
        map_bert_state_dict(checkpoint, n_layers=5)
    assert "unexpected keys (16)" in str(e.value) and "encoder.layer.5.output.dense.weight" in str(e.value)
    # a tensor of the wrong shape is named with both shapes
    bad = dict(checkpoint)
    bad["encoder.layer.2.attention.self.key.weight"] = torch.zeros(384, 383)
    shapes = r"layer.2.attention.self.key.weight: \(384, 383\), expected \(384, 384\)"
    with pytest.raises(CheckpointError, match=shapes):
        map_bert_state_dict(bad, n_layers=6)


def test_mapping_stacks_qkv_and_accepts_bert_prefix(checkpoint):
    mapped = map_bert_state_dict(checkpoint, n_layers=6)
    qkv = mapped["blocks.4.attn.qkv_proj.weight"]
    assert qkv.shape == (3 * 384, 384)
    for i, n in enumerate(("query", "key", "value")):
        assert torch.equal(qkv[i * 384 : (i + 1) * 384], checkpoint[f"encoder.layer.4.attention.self.{n}.weight"])
    assert torch.equal(mapped["blocks.4.ln1.weight"], checkpoint["encoder.layer.4.attention.output.LayerNorm.weight"])
    assert torch.equal(mapped["blocks.4.ln2.weight"], checkpoint["encoder.layer.4.output.LayerNorm.weight"])
    prefixed = map_bert_state_dict({"bert." + k: v for k, v in checkpoint.items()}, n_layers=6)
    assert prefixed.keys() == mapped.keys()


def test_load_bert_layer_matches_the_mapping(checkpoint):
    from tantra_lib import TransformerBlock

    mapped = map_bert_state_dict(checkpoint, n_layers=6)
    block = TransformerBlock(384, 12, 1536, norm_first=False, eps=1e-12)
    load_bert_layer(block, checkpoint, "encoder.layer.3.")
    for k, v in block.state_dict().items():
        assert torch.equal(v, mapped[f"blocks.3.{k}"]), k


def test_padding_is_masked_in_attention(encoders):
    enc = encoders(torch.device("cpu"))
    batch = enc.tokenize(["a short one", "a somewhat longer sentence with more tokens"])
    weights = enc.model.attention_weights(batch["input_ids"], batch["attention_mask"])
    assert len(weights) == 6 and weights[0].shape == (2, 12, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    pad = batch["attention_mask"][0] == 0
    assert bool(pad.any())
    for w in weights:
        assert float(w[0][..., pad].abs().max()) == 0.0  # no query attends to padding
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
    assert isinstance(enc.model, BertEncoder)
    assert all(not b.norm_first for b in enc.model.blocks) and enc.model.blocks[0].ln1.eps == 1e-12


def test_mean_pool_cosine_and_search():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[1], hidden[1, :2].mean(0))
    assert torch.equal(pooled[2], torch.zeros(4))
    a, b = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    b[2] = 0
    expected = F.cosine_similarity(a[:, None], b[None], dim=-1)
    torch.testing.assert_close(cosine_similarity_matrix(a, b), expected)
    scores, idx = semantic_search(a, b, top_k=3)
    assert scores.shape == idx.shape == (4, 3)
    torch.testing.assert_close(idx, expected.argsort(dim=1, descending=True)[:, :3])
    torch.testing.assert_close(scores, expected.gather(1, idx))
    s1, i1 = semantic_search(a[0], b, top_k=10)  # one query, top_k past the corpus size
    assert s1.shape == i1.shape == (6,)
    with pytest.raises(ValueError):
        cosine_similarity_matrix(a, torch.randn(3, 7))


def test_semantic_search_finds_the_paraphrase(encoders):
    enc = encoders(torch.device("cpu"))
    corpus = ["The weather is lovely today.", "He mourns the death of his child.", "Stocks fell on Monday."]
    scores, idx = semantic_search(enc.encode(["a father grieves for his dead son"]), enc.encode(corpus), top_k=1)
    assert int(idx[0, 0]) == 1 and float(scores[0, 0]) > 0.4


def test_tantra_path_does_not_import_sentence_transformers():
    code = (
        "import sys, json\n"
        "from tantra_lib.pretrained import load_minilm\n"
        "enc = load_minilm(device='cpu')\n"
        "e = enc.encode(['hello world', 'a second sentence'])\n"
        "assert e.shape == (2, 384)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sentence_transformers', 'transformers', 'huggingface_hub', 'all_minilm_l6_v2'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_shakespeare_lines():
    lines = shakespeare_lines()
    plays = {play for play, _ in lines}
    assert len(lines) > 20_000 and len(plays) == 37
    assert ("Hamlet", "To be, or not to be: that is the question:") in lines
    assert not any(text.startswith(("*", "_", "#")) or "\\" in text for _, text in lines)
    assert all(len(text.split()) >= 4 for _, text in lines)
