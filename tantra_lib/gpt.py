"""A GPT: the transformer block stacked into a next-token language model.

    ids (B, T) -> token embedding + position embedding -> n_layer pre-LN blocks with a
    causal mask -> final LayerNorm -> lm_head (weight shared with the token embedding)
    -> logits (B, T, vocab)

The logits at position t score every possible token t+1; training minimises their
cross-entropy against the text shifted by one. The layout and the initialisation follow
GPT-2 (Radford et al. 2019) as nanoGPT writes it: weights normal(0, 0.02), and the two
projections that write into the residual stream (``attn.out_proj``, ``ffn.fc_out``) scaled
by 1/sqrt(2 n_layer), because each block adds two of them to the same running sum.

``generate`` samples one token at a time; with ``use_cache=True`` each layer keeps its keys
and values in a :class:`~tantra_lib.kv_cache.KVCache`, so a new token costs one position of
work instead of the whole prefix.

Taught in lessons/08_gpt (the cache in lessons/09_kv_cache). Checked against the same
architecture built from torch modules (nn.Embedding, nn.TransformerEncoderLayer, nn.LayerNorm,
a tied nn.Linear) in tests/test_gpt.py, which also proves cached == uncached generation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .block import TransformerBlock
from .kv_cache import KVCache
from .norm import LayerNorm
from .positional import LearnedPositionalEmbedding
from .shortcut_guard import reference

__all__ = ["GPTConfig", "GPT", "PRESETS", "sample_from_logits"]


@dataclass
class GPTConfig:
    """The shape of a GPT. ``GPTConfig.preset("shakespeare", vocab_size=84)`` gives a named one."""

    vocab_size: int  # number of distinct tokens (a CharTokenizer's vocab_size)
    block_size: int  # context length: the most positions the model sees at once
    n_layer: int  # number of transformer blocks stacked
    n_head: int  # attention heads per block; d_model must be divisible by it
    d_model: int  # width of the residual stream (embedding size)
    d_ff: int | None = None  # hidden size of each feed-forward network; None -> 4 * d_model
    dropout: float = 0.0  # dropout on embeddings, attention weights and residual branches
    bias: bool = True  # biases in every Linear and LayerNorm (GPT-2 has them)

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides) -> GPTConfig:
        """A named configuration (see ``PRESETS``), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(vocab_size=vocab_size, **{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        """Plain ints/floats/bools only (what a weights_only checkpoint may hold)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}")
        return cls(**d)


# Named shapes (vocab_size is always given separately: it comes from the tokenizer).
PRESETS: dict[str, dict] = {
    # a few thousand parameters: unit tests and the lessons' QUICK runs
    "tiny": dict(block_size=16, n_layer=2, n_head=2, d_model=32),
    # the default `tantra train` recipe: 0.61 M parameters, trains on a 2-core CPU in minutes.
    # 3 layers, not 4: in the recipe's 210 s budget here, 3 layers make ~6,000 steps and reach
    # val 1.54 nats/char, 4 layers make ~3,900 steps and stop near 1.58 (bench/gpt.py).
    "shakespeare": dict(block_size=64, n_layer=3, n_head=4, d_model=128),
    # the KV-cache benchmark of lesson 09 / bench/gpt.py: long context, where caching pays most
    "kv-bench": dict(block_size=1024, n_layer=4, n_head=8, d_model=256),
}


@reference("GPT")
class GPT(nn.Module):
    """A decoder-only transformer language model.

    forward(idx long (B, T), targets long (B, T) or None) -> (logits (B, T, vocab), loss or None)
    generate(idx long (B, T), max_new_tokens) -> long (B, T + max_new_tokens)
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = LearnedPositionalEmbedding(c.block_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_head, c.d_ff, norm_first=True, dropout=c.dropout, bias=c.bias)
            for _ in range(c.n_layer)
        )
        self.ln_f = LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): reading a token in and scoring it out use one matrix,
        # the same Parameter object, so both uses train it and it is stored once.
        self.lm_head.weight = self.tok_emb.weight
        # (block_size, block_size) True on and below the diagonal; sliced per call.
        self.register_buffer("causal", torch.ones(c.block_size, c.block_size, dtype=torch.bool).tril(),
                             persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 initialisation: every Linear and embedding normal(0, 0.02), biases 0, LayerNorms
        1/0; the residual output projections normal(0, 0.02 / sqrt(2 n_layer))."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Embedding, LearnedPositionalEmbedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ffn.fc_out.weight, mean=0.0, std=residual_std)

    def num_parameters(self) -> int:
        """Trainable parameters, the tied matrix counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def new_caches(self) -> list[KVCache]:
        """One empty KVCache per block, each holding up to block_size positions."""
        return [KVCache(self.config.block_size) for _ in self.blocks]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: long (B, T) token ids; targets: long (B, T) (the ids shifted by one) or None.

        Returns logits (B, T, vocab) and the mean cross-entropy (a 0-dim tensor, in nats per
        token) when targets are given, else None. ``caches``: one KVCache per block (see
        ``new_caches``); idx then holds the *new* tokens, which take positions pos..pos+T-1
        after the pos already cached.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, seq) token ids, got shape {tuple(idx.shape)}")
        if idx.dtype not in (torch.long, torch.int32):
            raise TypeError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        b, t = idx.shape
        pos = 0
        if caches is not None:
            if len(caches) != len(self.blocks):
                raise ValueError(f"need one KVCache per block ({len(self.blocks)}), got {len(caches)}")
            pos = caches[0].pos
        if pos + t > self.config.block_size:
            raise ValueError(
                f"sequence of {pos + t} positions{f' ({pos} cached + {t} new)' if pos else ''} is longer than "
                f"block_size={self.config.block_size}; crop the context to its last {self.config.block_size} tokens"
            )
        if t == 0:
            raise ValueError("idx has no positions (T = 0)")
        # 1) what each token is + where it is
        positions = torch.arange(pos, pos + t, device=idx.device)  # (T,)
        x = self.tok_emb(idx) + self.pos_emb(positions)  # (B, T, C)
        if self.training and self.drop.p > 0:  # dropout is the identity otherwise: skip the call
            x = self.drop(x)
        # 2) causal mask: query i (at position pos+i) may see keys 0..pos+i. A single new
        #    query after a cache may see every cached key, so it needs no mask at all.
        mask = None if (caches is not None and t == 1) else self.causal[pos : pos + t, : pos + t]  # (T, pos+T)
        # 3) the blocks, each with its own cache
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, cache=None if caches is None else caches[i])  # (B, T, C)
        # 4) scores for the next token at every position
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits.reshape(b * t, -1), targets.reshape(b * t))  # (B*T, V) vs (B*T,)
        return logits, loss

    @torch.no_grad()
    def next_token_logits(self, idx: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """The logits (B, vocab) for the token after idx (B, T), as ``generate`` computes them.

        Without caches: the last block_size tokens go through the model (nanoGPT's crop).
        With caches: only the tokens not yet cached go through; when idx has outgrown
        block_size the window shifts, every position changes, so the caches are reset and
        rebuilt from the cropped window.
        """
        block = self.config.block_size
        if caches is None:
            return self(idx[:, -block:])[0][:, -1]
        pos = caches[0].pos
        if idx.shape[1] > block or pos == 0 or pos >= idx.shape[1]:
            for cache in caches:
                cache.reset()
            return self(idx[:, -block:], caches=caches)[0][:, -1]
        return self(idx[:, pos:], caches=caches)[0][:, -1]

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue idx long (B, T) by max_new_tokens sampled tokens -> long (B, T + max_new_tokens).

        temperature: logits are divided by it before the softmax; 0 means greedy (argmax).
        top_k: sample only among the k likeliest tokens. generator: a torch.Generator on the
        model's device, for repeatable samples. The model is put in eval mode (no dropout)
        for the call and restored afterwards.

        Context longer than block_size: like nanoGPT, only the last block_size tokens are
        fed to the model. With ``use_cache`` each call starts fresh caches; while the text
        fits in block_size each step feeds one token. Once it outgrows block_size, every
        token's learned position shifts by one at each step, so cached keys and values are
        stale: each step then rebuilds the caches from the cropped window (as costly as
        no cache) -- which keeps cached and uncached generation identical.
        """
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"idx must be (batch, seq) token ids with seq >= 1, got shape {tuple(idx.shape)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        was_training = self.training
        self.eval()
        try:
            # inference_mode: like no_grad, minus autograd's bookkeeping (it matters at one token a step)
            with torch.inference_mode():
                caches = self.new_caches() if use_cache else None
                for _ in range(max_new_tokens):
                    logits = self.next_token_logits(idx, caches)  # (B, vocab)
                    next_id = sample_from_logits(logits, temperature, top_k, generator)  # (B, 1)
                    idx = torch.cat([idx, next_id], dim=1)  # (B, T+1)
        finally:
            self.train(was_training)
        return idx.clone()  # a normal tensor again (usable as training data), not an inference tensor


@reference("sample_from_logits")
def sample_from_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, vocab) -> sampled ids long (B, 1). temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, vocab)
    return torch.multinomial(probs, num_samples=1, generator=generator)
