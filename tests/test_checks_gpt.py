"""Tests of the lesson 08 checks (tantra_lib/checks/gpt.py).

The implementations at module level stand for learner code: plausible wrong ones must be
rejected with a message naming the mistake, correct ones written differently must pass the
hidden cases too.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tantra_lib
from tantra_lib import LayerNorm, LearnedPositionalEmbedding, TransformerBlock, causal_mask, log_softmax
from tantra_lib.checks import outcome
from tantra_lib.checks.gpt import _functional_gpt, check_cross_entropy_loss, check_GPT, check_sample_next_token
from tantra_lib.gpt import GPT as RefGPT
from tantra_lib.gpt import GPTConfig, sample_from_logits

# ----------------------------------------------------------------------------- cross_entropy_loss


def ce_gather(logits, targets):
    v = logits.shape[-1]
    lp = log_softmax(logits.reshape(-1, v), dim=-1)  # (N, V)
    return -lp.gather(-1, targets.reshape(-1, 1)).mean()


def ce_logsumexp_onehot(logits, targets):
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    picked = (work * F.one_hot(targets, work.shape[-1]).to(work.dtype)).sum(-1)  # logit of the target
    return (torch.logsumexp(work, dim=-1) - picked).mean().to(logits.dtype)


def ce_index(logits, targets):
    flat = logits.reshape(-1, logits.shape[-1])
    lp = F.log_softmax(flat, dim=-1)
    return -lp[torch.arange(flat.shape[0], device=flat.device), targets.reshape(-1)].mean()


def ce_not_negated(logits, targets):
    return -ce_gather(logits, targets)


def ce_sum(logits, targets):
    return ce_gather(logits, targets) * targets.numel()


def ce_probabilities(logits, targets):
    p = tantra_lib.softmax(logits, dim=-1)
    return -p.gather(-1, targets.unsqueeze(-1)).mean()


def ce_raw_logits(logits, targets):
    return -logits.gather(-1, targets.unsqueeze(-1)).mean()


def ce_wrong_axis(logits, targets):
    lp = log_softmax(logits, dim=1)  # over positions for (B, T, V)
    return -lp.gather(-1, targets.unsqueeze(-1)).mean()


def ce_per_position(logits, targets):
    return -log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def ce_log_of_softmax(logits, targets):
    e = (logits - logits.amax(-1, keepdim=True)).exp()
    p = e / e.sum(-1, keepdim=True)
    return -p.log().gather(-1, targets.unsqueeze(-1)).mean()


def ce_2d_only(logits, targets):
    lp = log_softmax(logits, dim=-1)
    return -lp[torch.arange(logits.shape[0]), targets].mean()


def ce_sum_positions(logits, targets):
    lp = log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -(lp.sum(-1).mean() if lp.ndim == 2 else lp.mean())


def ce_shortcut(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def ce_nll_shortcut(logits, targets):
    return F.nll_loss(F.log_softmax(logits.reshape(-1, logits.shape[-1]), -1), targets.reshape(-1))


def ce_todo(logits, targets):
    raise NotImplementedError()


@pytest.mark.parametrize("impl", [ce_gather, ce_logsumexp_onehot, ce_index])
def test_cross_entropy_right(impl, device):
    assert outcome(check_cross_entropy_loss, impl, hidden=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (ce_not_negated, "wrong sign"),
    (ce_sum, "sums"),
    (ce_probabilities, "probabilities"),
    (ce_raw_logits, "raw logits"),
    (ce_wrong_axis, "dim 1"),
    (ce_per_position, "one loss per position"),
    (ce_log_of_softmax, "underflows"),
    (ce_2d_only, "Flatten"),
    (ce_sum_positions, "sums over the positions"),
])
def test_cross_entropy_wrong(impl, keyword):
    result = outcome(check_cross_entropy_loss, impl)
    assert result.status == "failed", result
    assert keyword in result.message + result.hint, result.message


def test_cross_entropy_shortcut_and_todo():
    assert outcome(check_cross_entropy_loss, ce_shortcut).status == "shortcut"
    assert outcome(check_cross_entropy_loss, ce_nll_shortcut).status == "shortcut"
    assert outcome(check_cross_entropy_loss, ce_todo).status == "not_attempted"


# ----------------------------------------------------------------------------- GPT


class GPTRight(nn.Module):
    """tantra_lib's pieces, a causal mask per call, init by a loop over modules."""

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = LearnedPositionalEmbedding(c.block_size, c.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(c.d_model, c.n_head, c.d_ff, norm_first=True, dropout=c.dropout,
                                                     bias=c.bias) for _ in range(c.n_layer))
        self.ln_f = LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    def init_weights(self):
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, 0.0, 0.02)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
        for block in self.blocks:
            for lin in (block.attn.out_proj, block.ffn.fc_out):
                nn.init.normal_(lin.weight, 0.0, 0.02 / math.sqrt(2 * self.config.n_layer))

    def embed(self, idx):
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"{t} tokens > block_size {self.config.block_size}")
        return self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))

    def run_blocks(self, x):
        mask = causal_mask(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, mask=mask)
        return x

    def head(self, x):
        return self.lm_head(self.ln_f(x))

    def forward(self, idx, targets=None):
        logits = self.head(self.run_blocks(self.embed(idx)))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


class GPTBuffer(nn.Module):
    """A non-persistent mask buffer, init through apply(), the loss written by hand."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = LearnedPositionalEmbedding(config.block_size, config.d_model)
        self.blocks = nn.ModuleList([TransformerBlock(config.d_model, config.n_head, config.d_ff,
                                                      dropout=config.dropout, bias=config.bias)
                                     for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tok_emb.weight = self.lm_head.weight
        self.register_buffer("mask", torch.tril(torch.ones(config.block_size, config.block_size)).bool(),
                             persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("fc_out.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.shape
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x, self.mask[:t, :t])
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        lp = torch.log_softmax(logits, dim=-1)
        return logits, -lp.gather(-1, targets[..., None]).mean()


class GPTUntied(GPTRight):
    def __init__(self, config):
        super().__init__(config)
        self.lm_head.weight = nn.Parameter(self.tok_emb.weight.detach().clone())


class GPTNoFinalNorm(GPTRight):
    def head(self, x):
        return self.lm_head(x)


class GPTNoPositions(GPTRight):
    def embed(self, idx):
        if idx.shape[1] > self.config.block_size:
            raise ValueError("too long")
        return self.tok_emb(idx)


class GPTNoMask(GPTRight):
    def run_blocks(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class GPTDefaultInit(GPTRight):
    def init_weights(self):
        pass


class GPTUnscaledResidual(GPTRight):
    def init_weights(self):
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, 0.0, 0.02)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)


class GPTPostLN(GPTRight):
    def __init__(self, config):
        super().__init__(config)
        for block in self.blocks:
            block.norm_first = False


class GPTShiftsAgain(GPTRight):
    def forward(self, idx, targets=None):
        logits, _ = super().forward(idx)
        loss = None
        if targets is not None:
            v = logits.shape[-1]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, v), targets[:, 1:].reshape(-1))
        return logits, loss


class GPTLastOnly(GPTRight):
    def forward(self, idx, targets=None):
        logits, loss = super().forward(idx, targets)
        return (logits, loss) if targets is not None else (logits[:, -1:], None)


class GPTShortcut(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.inner = RefGPT(config)

    def forward(self, idx, targets=None):
        return self.inner(idx, targets)


class GPTTodo(nn.Module):
    def __init__(self, config):
        super().__init__()
        raise NotImplementedError()


def test_functional_reference_matches_library():
    """The check's own forward pass agrees with tantra_lib.GPT (so either can be trusted)."""
    cfg = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, d_model=16, bias=False)
    torch.manual_seed(0)
    model = RefGPT(cfg).eval()
    idx = torch.randint(0, 11, (2, 6))
    torch.testing.assert_close(_functional_gpt(model.state_dict(), cfg, idx).float(), model(idx)[0],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", [GPTRight, GPTBuffer])
def test_gpt_right(impl, device):
    assert outcome(check_GPT, impl, hidden=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (GPTUntied, "not tied"),
    (GPTNoFinalNorm, "final LayerNorm"),
    (GPTNoPositions, "position embeddings"),
    (GPTNoMask, "future leaks"),
    (GPTDefaultInit, "0.02"),
    (GPTUnscaledResidual, "residual stream"),
    (GPTPostLN, "post-LN"),
    (GPTShiftsAgain, "shifts the targets again"),
    (GPTLastOnly, "last position only"),
])
def test_gpt_wrong(impl, keyword):
    result = outcome(check_GPT, impl)
    assert result.status == "failed", result
    assert keyword in result.message, result.message


def test_gpt_shortcut_and_todo():
    assert outcome(check_GPT, GPTShortcut).status == "shortcut"
    assert outcome(check_GPT, GPTTodo).status == "not_attempted"


# ----------------------------------------------------------------------------- sample_next_token


def sample_topk(logits, temperature=1.0, top_k=None, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / temperature
    if top_k is not None:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = tantra_lib.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_inverse_cdf(logits, temperature=1.0, top_k=None, generator=None):
    """Sort once, keep a prefix, draw u ~ U(0, 1) and find where the cumulative sum passes it."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(-1)
    sorted_logits, order = logits.double().sort(dim=-1, descending=True)
    if top_k is not None:
        sorted_logits = sorted_logits[:, :top_k]
        order = order[:, :top_k]
    p = torch.softmax(sorted_logits / temperature, dim=-1)
    cdf = p.cumsum(-1)
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device, dtype=cdf.dtype)
    pick = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_max(p.shape[-1] - 1)  # (B, 1)
    return order.gather(-1, pick).squeeze(-1)


def sample_times_temperature(logits, temperature=1.0, top_k=None, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    return sample_topk(logits * temperature, 1.0, top_k, generator)


def sample_smallest(logits, temperature=1.0, top_k=None, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / temperature
    if top_k is not None:
        kth = torch.topk(scaled, top_k, dim=-1, largest=False).values[:, -1:]
        scaled = scaled.masked_fill(scaled > kth, float("-inf"))
    return torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator).squeeze(-1)


def sample_zero_fill(logits, temperature=1.0, top_k=None, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / temperature
    if top_k is not None:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = torch.where(scaled < kth, torch.zeros_like(scaled), scaled)
    return torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator).squeeze(-1)


def sample_argmax(logits, temperature=1.0, top_k=None, generator=None):
    return logits.argmax(dim=-1)


def sample_global_rng(logits, temperature=1.0, top_k=None, generator=None):
    return sample_topk(logits, temperature, top_k, None)  # the global random state, not `generator`


def sample_keepdim(logits, temperature=1.0, top_k=None, generator=None):
    return sample_topk(logits, temperature, top_k, generator)[:, None]


def sample_divides_by_zero(logits, temperature=1.0, top_k=None, generator=None):
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_in_place(logits, temperature=1.0, top_k=None, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits[logits < kth] = float("-inf")
    return torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(-1)


def sample_shortcut(logits, temperature=1.0, top_k=None, generator=None):
    return sample_from_logits(logits, temperature, top_k, generator).squeeze(-1)


def sample_todo(logits, temperature=1.0, top_k=None, generator=None):
    raise NotImplementedError()


@pytest.mark.parametrize("impl", [sample_topk, sample_inverse_cdf])
def test_sample_right(impl, device):
    assert outcome(check_sample_next_token, impl, hidden=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (sample_times_temperature, "multiplies"),
    (sample_smallest, "smallest"),
    (sample_zero_fill, "instead of -inf"),
    (sample_argmax, "argmax"),
    (sample_global_rng, "generator is ignored"),
    (sample_keepdim, "(B,)"),
    (sample_divides_by_zero, "temperature == 0"),
    (sample_in_place, "in place"),
])
def test_sample_wrong(impl, keyword):
    result = outcome(check_sample_next_token, impl)
    assert result.status == "failed", result
    assert keyword in result.message + result.hint, result.message


def test_sample_shortcut_and_todo():
    assert outcome(check_sample_next_token, sample_shortcut).status == "shortcut"
    assert outcome(check_sample_next_token, sample_todo).status == "not_attempted"
