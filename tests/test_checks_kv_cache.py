"""Tests of the lesson 09 checks (tantra_lib/checks/kv_cache.py).

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
from tantra_lib import merge_heads, scaled_dot_product_attention, split_heads
from tantra_lib.checks import outcome
from tantra_lib.checks.kv_cache import check_CachedMultiHeadAttention, check_generate, check_KVCache

# ----------------------------------------------------------------------------- KVCache (right)


class KVCachePrealloc:
    """Buffers of max_len positions, allocated at the first update."""

    def __init__(self, max_len):
        self.max_len, self.k, self.v, self.pos = max_len, None, None, 0

    def update(self, k, v):
        b, h, t, d = k.shape
        if self.k is None:
            self.k = k.new_zeros(b, h, self.max_len, d)
            self.v = v.new_zeros(b, h, self.max_len, d)
        if self.pos + t > self.max_len:
            raise ValueError("KV cache is full")
        self.k[:, :, self.pos : self.pos + t] = k
        self.v[:, :, self.pos : self.pos + t] = v
        self.pos += t
        return self.k[:, :, : self.pos], self.v[:, :, : self.pos]

    def reset(self):
        self.pos = 0


class KVCacheCat:
    """Grows by concatenation; no preallocation."""

    def __init__(self, max_len):
        self.max_len = max_len
        self.reset()

    def update(self, k, v):
        if self.pos + k.shape[2] > self.max_len:
            raise ValueError(f"only {self.max_len} positions fit")
        self.keys = k if self.keys is None else torch.cat([self.keys, k], dim=-2)
        self.values = v if self.values is None else torch.cat([self.values, v], dim=-2)
        return self.keys, self.values

    @property
    def pos(self):
        return 0 if self.keys is None else self.keys.shape[2]

    def reset(self):
        self.keys = self.values = None


class KVCacheChunks:
    """Keeps a list of chunks and concatenates on read."""

    def __init__(self, max_len):
        self.max_len, self.chunks, self.pos = max_len, [], 0

    def update(self, k, v):
        if self.pos + k.shape[2] > self.max_len:
            raise ValueError("full")
        self.chunks.append((k.clone(), v.clone()))
        self.pos += k.shape[2]
        return torch.cat([c[0] for c in self.chunks], 2), torch.cat([c[1] for c in self.chunks], 2)

    def reset(self):
        self.chunks, self.pos = [], 0


# ----------------------------------------------------------------------------- KVCache (wrong)


class KVCacheNoAdvance(KVCachePrealloc):
    def update(self, k, v):
        b, h, t, d = k.shape
        if self.k is None:
            self.k = k.new_zeros(b, h, self.max_len, d)
            self.v = v.new_zeros(b, h, self.max_len, d)
        self.k[:, :, self.pos : self.pos + t] = k
        self.v[:, :, self.pos : self.pos + t] = v
        return self.k[:, :, : self.pos + t], self.v[:, :, : self.pos + t]  # pos is never moved on


class KVCacheWriteAtZero(KVCachePrealloc):
    def update(self, k, v):
        b, h, t, d = k.shape
        if self.k is None:
            self.k = k.new_zeros(b, h, self.max_len, d)
            self.v = v.new_zeros(b, h, self.max_len, d)
        if self.pos + t > self.max_len:
            raise ValueError("full")
        self.k[:, :, :t] = k
        self.v[:, :, :t] = v
        self.pos += t
        return self.k[:, :, : self.pos], self.v[:, :, : self.pos]


class KVCacheOnlyNew(KVCachePrealloc):
    def update(self, k, v):
        super().update(k, v)
        return k, v


class KVCacheWholeBuffer(KVCachePrealloc):
    def update(self, k, v):
        super().update(k, v)
        return self.k, self.v


class KVCacheSwapped(KVCachePrealloc):
    def update(self, k, v):
        k_all, v_all = super().update(k, v)
        return v_all, k_all


class KVCacheResetForgetsPos(KVCachePrealloc):
    def reset(self):
        self.k = self.v = None  # drops the buffers, but pos stays


class KVCacheNeverFull(KVCacheCat):
    def update(self, k, v):
        self.keys = k if self.keys is None else torch.cat([self.keys, k], dim=-2)
        self.values = v if self.values is None else torch.cat([self.values, v], dim=-2)
        return self.keys, self.values


class KVCacheReturnsOld(KVCachePrealloc):
    def update(self, k, v):
        old = (self.k[:, :, : self.pos], self.v[:, :, : self.pos]) if self.k is not None else (k[:, :, :0], v[:, :, :0])
        super().update(k, v)
        return old


class KVCacheShortcut:
    def __init__(self, max_len):
        self.inner = tantra_lib.KVCache(max_len)
        self.pos = 0

    def update(self, k, v):
        out = self.inner.update(k, v)
        self.pos = self.inner.pos
        return out

    def reset(self):
        self.inner.reset()
        self.pos = 0


class KVCacheTodo:
    def __init__(self, max_len):
        self.pos = 0

    def update(self, k, v):
        raise NotImplementedError()


@pytest.mark.parametrize("impl", [KVCachePrealloc, KVCacheCat, KVCacheChunks])
def test_kv_cache_right(impl, device):
    assert outcome(check_KVCache, impl, hidden=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (KVCacheNoAdvance, "never advanced"),
    (KVCacheWriteAtZero, "position 0"),
    (KVCacheOnlyNew, "only the new"),
    (KVCacheWholeBuffer, "whole preallocated buffer"),
    (KVCacheSwapped, "swapped"),
    (KVCacheResetForgetsPos, "reset()"),
    (KVCacheNeverFull, "ValueError"),
    (KVCacheReturnsOld, "before this update"),
])
def test_kv_cache_wrong(impl, keyword):
    result = outcome(check_KVCache, impl)
    assert result.status == "failed", result
    assert keyword in result.message, result.message


def test_kv_cache_shortcut_and_todo():
    assert outcome(check_KVCache, KVCacheShortcut).status == "shortcut"
    assert outcome(check_KVCache, KVCacheTodo).status == "not_attempted"


# ----------------------------------------------------------------------------- CachedMultiHeadAttention


class _Base(nn.Module):
    def __init__(self, d_model, n_heads, bias=True):
        super().__init__()
        self.n_heads = n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def qkv(self, x):
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        return [split_heads(t, self.n_heads) for t in (q, k, v)]

    def finish(self, q, k, v, mask):
        out, _ = scaled_dot_product_attention(q, k, v, mask)
        return self.out_proj(merge_heads(out))


class MHAOffsetTril(_Base):
    def forward(self, x, cache=None):
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = cache.update(k, v)
        t, total = q.shape[-2], k.shape[-2]
        mask = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(diagonal=total - t)
        return self.finish(q, k, v, mask)


class MHAPositions(nn.Module):
    """einsum and explicit absolute positions; torch's sdpa for the softmax-average."""

    def __init__(self, d_model, n_heads, bias=True):
        super().__init__()
        self.h = n_heads
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, cache=None):
        b, t, c = x.shape
        qkv = self.qkv_proj(x).view(b, t, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        q, k, v = qkv[0], qkv[1], qkv[2]
        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.update(k, v)
        q_pos = torch.arange(start, start + t, device=x.device)
        k_pos = torch.arange(k.shape[2], device=x.device)
        allowed = k_pos[None, :] <= q_pos[:, None]
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(c // self.h)
        w = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out = torch.einsum("bhqk,bhkd->bhqd", w, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class MHATorchSDPA(_Base):
    def forward(self, x, cache=None):
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = cache.update(k, v)
        t, total = q.shape[-2], k.shape[-2]
        mask = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(diagonal=total - t)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(merge_heads(out))


class MHANotOffset(_Base):
    def forward(self, x, cache=None):
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = cache.update(k, v)
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=x.device).tril()
        return self.finish(q, k, v, mask)


class MHANoMaskWithCache(_Base):
    def forward(self, x, cache=None):
        q, k, v = self.qkv(x)
        if cache is None:
            return self.finish(q, k, v, tantra_lib.causal_mask(x.shape[1], x.device))
        k, v = cache.update(k, v)
        return self.finish(q, k, v, None)


class MHAOnlyNewKeys(_Base):
    def forward(self, x, cache=None):
        q, k, v = self.qkv(x)
        if cache is not None:
            cache.update(k, v)  # written, but the returned keys/values are not used
        return self.finish(q, k, v, tantra_lib.causal_mask(x.shape[1], x.device))


class MHANoUpdate(_Base):
    def forward(self, x, cache=None):
        q, k, v = self.qkv(x)
        return self.finish(q, k, v, tantra_lib.causal_mask(x.shape[1], x.device))


class MHACachesQueries(_Base):
    """Keeps the queries too and returns a row for every cached position."""

    def forward(self, x, cache=None):
        q, k, v = self.qkv(x)
        if cache is not None:
            if not hasattr(cache, "queries") or cache.pos == 0:
                cache.queries = q
            else:
                cache.queries = torch.cat([cache.queries, q], dim=2)
            q = cache.queries
            k, v = cache.update(k, v)
        return self.finish(q, k, v, tantra_lib.causal_mask(q.shape[-2], x.device))


class MHANoCausal(_Base):
    def forward(self, x, cache=None):
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = cache.update(k, v)
        return self.finish(q, k, v, None)


class MHAShortcut(tantra_lib.MultiHeadAttention):
    def forward(self, x, cache=None):
        t = x.shape[1]
        pos = 0 if cache is None else cache.pos
        mask = torch.ones(t, pos + t, dtype=torch.bool, device=x.device).tril(diagonal=pos)
        return super().forward(x, mask=mask, cache=cache)


class MHAWrapsReference(nn.Module):
    def __init__(self, d_model, n_heads, bias=True):
        super().__init__()
        self.inner = tantra_lib.MultiHeadAttention(d_model, n_heads, bias=bias)


class MHATodo(_Base):
    def forward(self, x, cache=None):
        raise NotImplementedError()


@pytest.mark.parametrize("impl", [MHAOffsetTril, MHAPositions, MHATorchSDPA])
def test_cached_mha_right(impl, device):
    assert outcome(check_CachedMultiHeadAttention, impl, hidden=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (MHANotOffset, "not offset"),
    (MHANoMaskWithCache, "inside a multi-token step"),
    (MHAOnlyNewKeys, "only to the new keys"),
    (MHANoUpdate, "not appended"),
    (MHACachesQueries, "Queries are never cached"),
    (MHANoCausal, "no causal mask"),
])
def test_cached_mha_wrong(impl, keyword):
    result = outcome(check_CachedMultiHeadAttention, impl)
    assert result.status == "failed", result
    assert keyword in result.message, result.message


def test_cached_mha_shortcut_and_todo():
    assert outcome(check_CachedMultiHeadAttention, MHAShortcut).status == "shortcut"
    assert outcome(check_CachedMultiHeadAttention, MHAWrapsReference).status == "shortcut"
    assert outcome(check_CachedMultiHeadAttention, MHATodo).status == "not_attempted"


# ----------------------------------------------------------------------------- generate


@torch.no_grad()
def generate_with_forward(model, idx, max_new_tokens, use_cache=True):
    """The model's forward with caches=...; rebuild the caches when the window shifts."""
    block = model.config.block_size
    caches = [tantra_lib.KVCache(block) for _ in model.blocks] if use_cache else None
    for _ in range(max_new_tokens):
        if caches is None:
            logits, _ = model(idx[:, -block:])
        elif caches[0].pos == 0 or idx.shape[1] > block:
            for c in caches:
                c.reset()
            logits, _ = model(idx[:, -block:], caches=caches)
        else:
            logits, _ = model(idx[:, -1:], caches=caches)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def _step(model, new, caches, start):
    """New tokens through the model's pieces, positions start.., with the offset causal mask."""
    t = new.shape[1]
    x = model.tok_emb(new) + model.pos_emb(torch.arange(start, start + t, device=new.device))
    mask = torch.ones(t, start + t, dtype=torch.bool, device=new.device).tril(diagonal=start)
    for block, cache in zip(model.blocks, caches or [None] * len(model.blocks)):
        x = block(x, mask=mask if caches else mask[:, -t:], cache=cache)
    return model.lm_head(model.ln_f(x))[:, -1]


def generate_by_hand(model, idx, max_new_tokens, use_cache=True):
    """The blocks called one by one, with this learner's own KVCache class."""
    block = model.config.block_size
    out = idx
    caches = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            window = out[:, -block:]
            if not use_cache:
                logits = _step(model, window, None, 0)
            elif caches is None or out.shape[1] > block:
                caches = [KVCacheCat(block) for _ in model.blocks]
                logits = _step(model, window, caches, 0)
            else:
                logits = _step(model, out[:, -1:], caches, caches[0].pos)
            out = torch.cat([out, logits.argmax(dim=-1)[:, None]], dim=1)
    return out


def generate_no_crop(model, idx, max_new_tokens, use_cache=True):
    block = model.config.block_size
    caches = model.new_caches() if use_cache else None
    with torch.no_grad():
        logits, _ = model(idx[:, -block:], caches=caches)
        for i in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], 1)
            if i + 1 < max_new_tokens:
                logits, _ = model(nxt if use_cache else idx[:, -block:], caches=caches)
    return idx


def generate_crop_last_token_only(model, idx, max_new_tokens, use_cache=True):
    """Past block_size it empties the caches but feeds only the newest token, so the context is lost."""
    block = model.config.block_size
    caches = model.new_caches() if use_cache else None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if caches is None or caches[0].pos == 0:
                logits, _ = model(idx[:, -block:], caches=caches)
            else:
                if caches[0].pos >= block:
                    for c in caches:
                        c.reset()
                logits, _ = model(idx[:, -1:], caches=caches)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return idx


def generate_ignores_cache(model, idx, max_new_tokens, use_cache=True):
    return generate_with_forward(model, idx, max_new_tokens, use_cache=False)


def generate_positions_from_zero(model, idx, max_new_tokens, use_cache=True):
    block = model.config.block_size
    caches = [tantra_lib.KVCache(block) for _ in model.blocks] if use_cache else None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if caches is None or caches[0].pos == 0 or idx.shape[1] > block:
                if caches:
                    for c in caches:
                        c.reset()
                logits = _step(model, idx[:, -block:], caches, 0)
            else:
                logits = _step(model, idx[:, -1:], caches, 0)  # position 0 again: not offset
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], 1)
    return idx


def generate_first_logits(model, idx, max_new_tokens, use_cache=True):
    block = model.config.block_size
    caches = model.new_caches() if use_cache else None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if caches is None or caches[0].pos == 0 or idx.shape[1] > block:
                if caches:
                    for c in caches:
                        c.reset()
                logits, _ = model(idx[:, -block:], caches=caches)
            else:
                logits, _ = model(idx[:, -1:], caches=caches)
            pick = logits[:, 0] if caches else logits[:, -1]
            idx = torch.cat([idx, pick.argmax(-1, keepdim=True)], 1)
    return idx


_SHARED: dict = {}


def generate_reuses_caches(model, idx, max_new_tokens, use_cache=True):
    """Keeps its caches between calls (made once per model)."""
    if not use_cache:
        return generate_with_forward(model, idx, max_new_tokens, use_cache=False)
    block = model.config.block_size
    caches = _SHARED.setdefault(id(model), model.new_caches())
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if caches[0].pos == 0 or idx.shape[1] > block or caches[0].pos + 1 > block:
                for c in caches:
                    c.reset()
                logits, _ = model(idx[:, -block:], caches=caches)
            else:
                logits, _ = model(idx[:, -1:], caches=caches)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return idx


def generate_shortcut(model, idx, max_new_tokens, use_cache=True):
    return model.generate(idx, max_new_tokens, temperature=0.0, use_cache=use_cache)


def generate_todo(model, idx, max_new_tokens, use_cache=True):
    raise NotImplementedError()


@pytest.mark.parametrize("impl", [generate_with_forward, generate_by_hand])
def test_generate_right(impl, device):
    assert outcome(check_generate, impl, hidden=True).passed


@pytest.mark.parametrize("impl, keyword", [
    (generate_no_crop, "outgrew block_size"),
    (generate_crop_last_token_only, "once the text outgrew block_size"),
    (generate_ignores_cache, "quadratic"),
    (generate_positions_from_zero, "position 0"),
    (generate_first_logits, "first position"),
    (generate_reuses_caches, "previous call"),
])
def test_generate_wrong(impl, keyword):
    _SHARED.clear()
    result = outcome(check_generate, impl)
    assert result.status == "failed", result
    assert keyword in result.message, result.message


def test_generate_shortcut_and_todo():
    assert outcome(check_generate, generate_shortcut).status == "shortcut"
    assert outcome(check_generate, generate_todo).status == "not_attempted"
