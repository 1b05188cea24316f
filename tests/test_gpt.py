"""tantra_lib.GPT against the same architecture built from torch's own modules, and the KV
cache proven transparent: cached and uncached generation give the same tokens and logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tantra_lib import GPT, GPTConfig, KVCache, MultiHeadAttention
from tantra_lib.gpt import PRESETS, sample_from_logits

VOCAB = 11


# Small models: one thread is faster than two (the `one_thread` fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> GPTConfig:
    return GPTConfig.preset("tiny", vocab_size=VOCAB, **overrides)


def make_gpt(device, seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**overrides)).to(device).eval()


class TorchGPT(nn.Module):
    """The reference: nn.Embedding x2, nn.TransformerEncoderLayer (norm_first, GELU, causal),
    nn.LayerNorm and an nn.Linear tied to the token embedding."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(c.d_model, c.n_head, c.d_ff, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True, bias=c.bias)
            for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)  # -inf above the diagonal
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def load_from(self, gpt: GPT) -> TorchGPT:
        self.tok_emb.weight.copy_(gpt.tok_emb.weight)
        self.pos_emb.weight.copy_(gpt.pos_emb.weight)
        for layer, block in zip(self.layers, gpt.blocks, strict=True):
            # qkv_proj rows are [q; k; v], the layout of in_proj_weight
            layer.self_attn.in_proj_weight.copy_(block.attn.qkv_proj.weight)
            layer.self_attn.out_proj.weight.copy_(block.attn.out_proj.weight)
            layer.linear1.weight.copy_(block.ffn.fc_in.weight)
            layer.linear2.weight.copy_(block.ffn.fc_out.weight)
            layer.norm1.weight.copy_(block.ln1.weight)
            layer.norm2.weight.copy_(block.ln2.weight)
            if gpt.config.bias:
                layer.self_attn.in_proj_bias.copy_(block.attn.qkv_proj.bias)
                layer.self_attn.out_proj.bias.copy_(block.attn.out_proj.bias)
                layer.linear1.bias.copy_(block.ffn.fc_in.bias)
                layer.linear2.bias.copy_(block.ffn.fc_out.bias)
                layer.norm1.bias.copy_(block.ln1.bias)
                layer.norm2.bias.copy_(block.ln2.bias)
        self.ln_f.weight.copy_(gpt.ln_f.weight)
        if gpt.config.bias:
            self.ln_f.bias.copy_(gpt.ln_f.bias)
        return self


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 1) -> None:
    """Make every parameter non-trivial (biases non-zero, LayerNorm gains != 1)."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p.device))


# ---------------------------------------------------------------- config and structure


def test_config_defaults_and_presets():
    c = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, d_model=16)
    assert c.d_ff == 64 and c.dropout == 0.0 and c.bias is True
    assert {"tiny", "shakespeare", "kv-bench"} <= set(PRESETS)
    s = GPTConfig.preset("shakespeare", vocab_size=84)
    assert (s.n_layer, s.n_head, s.d_model, s.block_size) == (3, 4, 128, 64)
    assert GPTConfig.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, d_model=16)
    with pytest.raises(ValueError, match="block_size"):
        GPTConfig(vocab_size=10, block_size=0, n_layer=1, n_head=2, d_model=16)
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("huge", vocab_size=10)


def test_structure_and_init():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=32, n_layer=3, n_head=4, d_model=64)
    model = GPT(config)
    assert len(model.blocks) == 3 and all(b.norm_first for b in model.blocks)
    assert model.lm_head.bias is None
    n = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == n  # the tied matrix once
    std = 0.02 / math.sqrt(2 * config.n_layer)
    for block in model.blocks:
        assert block.attn.out_proj.weight.std().item() == pytest.approx(std, rel=0.1)
        assert block.ffn.fc_out.weight.std().item() == pytest.approx(std, rel=0.1)
        assert block.ffn.fc_in.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.all(block.attn.qkv_proj.bias == 0) and torch.all(block.ln1.weight == 1)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.pos_emb.weight.std().item() == pytest.approx(0.02, rel=0.15)


def test_tied_weights_share_storage_and_gradient(device):
    model = make_gpt(device).train()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    # token 0 never appears in the input, so its row's gradient can only come through lm_head
    idx = torch.randint(1, VOCAB, (2, 8), device=device)
    _, loss = model(idx, torch.randint(0, VOCAB, (2, 8), device=device))
    loss.backward()
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad[0].abs().sum() > 0
    # one update moves both uses
    with torch.no_grad():
        model.tok_emb.weight[3, 0] = 7.0
    assert model.lm_head.weight[3, 0].item() == 7.0
    # still tied after a state-dict round trip
    other = GPT(model.config).to(device)
    other.load_state_dict(model.state_dict())
    assert other.lm_head.weight is other.tok_emb.weight


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_torch_modules(device, bias):
    model = make_gpt(device, bias=bias)
    perturb(model)
    ref = TorchGPT(model.config).to(device).eval().load_from(model)
    gen = torch.Generator().manual_seed(3)
    for t in (1, 7, model.config.block_size):
        idx = torch.randint(0, VOCAB, (3, t), generator=gen).to(device)
        targets = torch.randint(0, VOCAB, (3, t), generator=gen).to(device)
        logits, loss = model(idx, targets)
        with torch.no_grad():
            expected = ref(idx)
        assert logits.shape == (3, t, VOCAB)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loss, F.cross_entropy(expected.reshape(-1, VOCAB), targets.reshape(-1)),
                                   atol=1e-5, rtol=1e-5)
    assert model(idx)[1] is None


def test_initial_loss_is_uniform_guess(device):
    model = make_gpt(device)
    idx = torch.randint(0, VOCAB, (4, 16), device=device)
    _, loss = model(idx, torch.randint(0, VOCAB, (4, 16), device=device))
    assert loss.item() == pytest.approx(math.log(VOCAB), abs=0.05)


def test_input_past_block_size_raises(device):
    model = make_gpt(device)
    too_long = torch.zeros(1, model.config.block_size + 1, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="block_size"):
        model(too_long)
    with pytest.raises(ValueError, match="batch, seq"):
        model(torch.zeros(5, dtype=torch.long, device=device))


# ---------------------------------------------------------------- KVCache


def test_kv_cache_update_and_read():
    cache = KVCache(max_len=6)
    assert cache.pos == 0 and len(cache) == 0 and cache.nbytes() == 0
    k1, v1 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    k, v = cache.update(k1, v1)
    assert cache.pos == 4 and torch.equal(k, k1) and torch.equal(v, v1)
    k2, v2 = torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5)
    k, v = cache.update(k2, v2)
    assert k.shape == (2, 3, 5, 5) and cache.pos == 5
    assert torch.equal(k, torch.cat([k1, k2], dim=2)) and torch.equal(v, torch.cat([v1, v2], dim=2))
    assert cache.nbytes() == 2 * 2 * 3 * 6 * 5 * 4  # preallocated to max_len, float32
    cache.reset()
    assert cache.pos == 0
    k, _ = cache.update(k2, v2)
    assert torch.equal(k, k2)


def test_kv_cache_errors():
    cache = KVCache(max_len=4)
    cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="full"):
        cache.update(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    assert cache.pos == 3  # a refused update changes nothing
    with pytest.raises(ValueError, match="reset"):
        cache.update(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
    with pytest.raises(ValueError, match="same shape"):
        cache.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 3))
    with pytest.raises(ValueError):
        KVCache(0)


def test_attention_with_cache_matches_full_causal(device):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).to(device).eval()
    x = torch.randn(2, 9, 16, device=device)
    causal = torch.ones(9, 9, dtype=torch.bool, device=device).tril()
    with torch.no_grad():
        full = mha(x, mask=causal)
        cache, outs, pos = KVCache(9), [], 0
        for t in (4, 1, 3, 1):  # chunks: queries pos..pos+t-1 against keys 0..pos+t-1
            outs.append(mha(x[:, pos : pos + t], mask=causal[pos : pos + t, : pos + t], cache=cache))
            pos += t
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-6, rtol=1e-5)
    # the fused path and the reference math (return_weights=True) agree
    with torch.no_grad():
        ref, weights = mha(x, mask=causal, return_weights=True)
    torch.testing.assert_close(full, ref, atol=1e-6, rtol=1e-5)
    assert torch.all(weights.masked_select(~causal) == 0)


# ---------------------------------------------------------------- cached == uncached


@pytest.mark.parametrize("chunks", [(16,), (1,) * 16, (5, 1, 4, 6), (3, 13)])
def test_chunked_forward_with_cache_matches_full(device, chunks):
    model = make_gpt(device)
    perturb(model)
    idx = torch.randint(0, VOCAB, (2, 16), device=device)
    full, _ = model(idx)
    caches, pos, outs = model.new_caches(), 0, []
    for t in chunks:
        outs.append(model(idx[:, pos : pos + t], caches=caches)[0])
        pos += t
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)
    assert all(c.pos == 16 for c in caches)
    with pytest.raises(ValueError, match="block_size"):
        model(idx[:, :1], caches=caches)


@pytest.mark.parametrize("prompt_len, new_tokens", [(1, 10), (4, 30), (16, 5), (23, 6)])
def test_cached_logits_equal_uncached_step_by_step(device, prompt_len, new_tokens):
    """Includes crossing block_size (16): the cache is rebuilt from the cropped window."""
    model = make_gpt(device)
    perturb(model)
    gen = torch.Generator().manual_seed(prompt_len)
    idx = torch.randint(0, VOCAB, (2, prompt_len + new_tokens), generator=gen).to(device)
    caches = model.new_caches()
    for end in range(prompt_len, prompt_len + new_tokens + 1):
        plain = model.next_token_logits(idx[:, :end])
        cached = model.next_token_logits(idx[:, :end], caches)
        torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
        assert caches[0].pos == min(end, model.config.block_size)


@pytest.mark.parametrize("prompt_len, new_tokens", [(1, 12), (3, 40), (16, 4), (20, 8)])
def test_generate_greedy_cached_equals_uncached(device, prompt_len, new_tokens):
    model = make_gpt(device, seed=prompt_len)
    perturb(model, seed=prompt_len)
    prompt = torch.randint(0, VOCAB, (1, prompt_len), device=device)
    fast = model.generate(prompt, new_tokens, temperature=0, use_cache=True)
    slow = model.generate(prompt, new_tokens, temperature=0, use_cache=False)
    assert fast.shape == (1, prompt_len + new_tokens)
    assert torch.equal(fast[:, :prompt_len], prompt)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("top_k", [None, 3])
def test_generate_sampled_cached_equals_uncached(device, top_k):
    model = make_gpt(device)
    perturb(model)
    prompt = torch.randint(0, VOCAB, (2, 3), device=device)
    runs = []
    for use_cache in (True, False):
        gen = torch.Generator(device=device).manual_seed(42)
        runs.append(model.generate(prompt, 30, temperature=1.0, top_k=top_k, use_cache=use_cache, generator=gen))
    assert torch.equal(runs[0], runs[1])
    # a different seed gives a different sample (the generator is really used)
    other = model.generate(prompt, 30, top_k=top_k, generator=torch.Generator(device=device).manual_seed(7))
    assert not torch.equal(other, runs[0])


def test_generate_batch_rows_are_independent(device):
    model = make_gpt(device)
    perturb(model)
    prompt = torch.randint(0, VOCAB, (3, 5), device=device)
    batched = model.generate(prompt, 25, temperature=0)
    assert torch.equal(batched, model.generate(prompt, 25, temperature=0, use_cache=False))
    for row in range(3):
        assert torch.equal(batched[row : row + 1], model.generate(prompt[row : row + 1], 25, temperature=0))


def test_generate_starts_fresh_caches_each_call(device):
    model = make_gpt(device).train()
    perturb(model)
    a = torch.randint(0, VOCAB, (1, 6), device=device)
    b = torch.randint(0, VOCAB, (1, 2), device=device)
    first = model.generate(a, 12, temperature=0)
    model.generate(b, 9, temperature=0)  # would leave a used cache behind if caches persisted
    assert torch.equal(model.generate(a, 12, temperature=0), first)
    assert torch.equal(first, model.generate(a, 12, temperature=0, use_cache=False))
    assert model.training  # the mode is restored
    _, loss = model(first[:, -9:-1], first[:, -8:])  # generated ids are ordinary tensors: trainable on
    loss.backward()


def test_sampling_rules(device):
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]], device=device)
    assert sample_from_logits(logits, temperature=0).item() == 1
    gen = torch.Generator(device=device).manual_seed(0)
    draws = {sample_from_logits(logits, 1.0, top_k=2, generator=gen).item() for _ in range(200)}
    assert draws == {1, 3}  # only the two likeliest
    model = make_gpt(device)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 1, dtype=torch.long, device=device), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(torch.zeros(1, 1, dtype=torch.long, device=device), 2, top_k=0)
    with pytest.raises(ValueError, match="seq >= 1"):
        model.generate(torch.zeros(1, 0, dtype=torch.long, device=device), 2)
