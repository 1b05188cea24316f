"""Checks of lesson 09_kv_cache: ``KVCache``, ``CachedMultiHeadAttention``, ``generate``.

* ``KVCache`` is fed a schedule of updates (a prompt, single tokens, a chunk) and every
  returned tensor is compared with the concatenation of everything written so far; the
  typical mistakes (pos never advanced, writing at 0, returning only the new keys or the
  whole buffer, keys and values swapped, reset that forgets pos, no error when full) are
  simulated and named.
* ``CachedMultiHeadAttention`` gets the weights of a reference attention layer and is run
  chunk by chunk with a cache; each chunk's output must equal the matching rows of one full
  causal pass, computed here from the weights with plain tensor operations. Outputs of the
  typical mistakes (mask not offset by the cached positions, no mask inside a chunk,
  attending only to the new keys, returning a row per cached position) are named.
* ``generate`` runs on a small random ``tantra_lib.GPT``; its greedy tokens must equal those
  of the naive loop (the whole prefix through the model at every step, cropped at
  block_size), and with the cache every step after the prompt must push exactly one new
  position through the blocks (counted with a forward hook).

Tested against wrong and right implementations in tests/test_checks_kv_cache.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..device import get_device
from ..shortcut_guard import ShortcutUsed
from ._core import Mistake, call, compare, exercise, expect, load_weights

__all__ = ["check_KVCache", "check_CachedMultiHeadAttention", "check_generate"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64).to(dtype).to(get_device())


# ----------------------------------------------------------------------------- KVCache

_KV_HINT = ("update(k, v) writes the new (B, H, t_new, D) keys/values at positions pos..pos+t_new-1 of dim 2, "
            "advances pos by t_new and returns everything cached: (B, H, pos, D) each.")


def _as_pair(out, what):
    expect(isinstance(out, (tuple, list)) and len(out) == 2,
           f"{what} returned {type(out).__name__}, expected a pair (k_all, v_all).",
           "End update() with `return k_all, v_all`.")
    return out


def _pos(cache, what):
    expect(hasattr(cache, "pos"), f"{what}: the cache has no attribute `pos`.",
           "Keep the number of cached positions in self.pos (0 after __init__ and after reset()).")
    pos = cache.pos
    return int(pos)


def _kv_mistakes(history, new, other):
    """What typical wrong caches return after `history` (list of (B, H, t, D)) then `new` was written.

    `other` is the expected output of the other buffer (values for keys): a swap returns it."""
    out = []
    if history:
        prev = torch.cat(history, dim=2)
        total, n_prev, t_new = prev.shape[2] + new.shape[2], prev.shape[2], new.shape[2]
        at_zero = new.new_zeros(*new.shape[:2], total, new.shape[3])  # writes at 0, pos advanced anyway
        at_zero[:, :, :n_prev] = prev
        at_zero[:, :, :t_new] = new
        out.append((at_zero, "the new keys/values were written at position 0, over the oldest ones, instead of "
                    "at `pos`.", "Write at self.k[:, :, self.pos:self.pos + t_new], then advance pos."))
    out.append((other, "keys and values are swapped.", "Return (keys, values) in that order, each from its own "
                "buffer."))
    return out


def _kv_step(cache, k, v, history_k, history_v, label):
    """One update, compared with the concatenation of everything written so far."""
    k_all, v_all = _as_pair(call(cache.update, k, v, name="KVCache.update"), f"update() {label}")
    exp_k = torch.cat(history_k + [k], dim=2)
    exp_v = torch.cat(history_v + [v], dim=2)
    total, t_new = exp_k.shape[2], k.shape[2]
    pos = _pos(cache, f"after update() {label}")
    if isinstance(k_all, torch.Tensor):
        b, h, _, d = k.shape
        if history_k and tuple(k_all.shape) == (b, h, t_new, d) and torch.equal(k_all, k):
            if pos in (0, t_new):
                raise Mistake(f"update() {label}: `pos` is never advanced, so every update starts again at "
                              "position 0 and only the new keys come back.",
                              "After writing, add t_new to self.pos.")
            raise Mistake(f"update() {label} returned only the new keys/values, not everything cached.", _KV_HINT)
        if k_all.ndim == 4 and k_all.shape[2] == total - t_new:
            raise Mistake(f"update() {label} returned the {total - t_new} positions cached before this update, without "
                          "the new ones.", "Write the new keys/values first, advance pos, then return "
                          "self.k[:, :, :self.pos] (and the same for v).")
        max_len = getattr(cache, "max_len", None)
        if k_all.ndim == 4 and k_all.shape[2] == max_len and max_len > total:
            raise Mistake(f"update() {label} returned the whole preallocated buffer ({max_len} positions) "
                          f"instead of the {total} positions filled so far.",
                          "Slice the buffers: self.k[:, :, :self.pos].")
        if tuple(k_all.shape) != tuple(exp_k.shape) and history_k:
            for dim in (0, 1, 3):
                if tuple(k_all.shape) == tuple(torch.cat(history_k + [k], dim=dim).shape):
                    raise Mistake(f"update() {label}: the keys were concatenated along dim {dim}; positions are "
                                  "dim 2 of (B, H, T, D).", _KV_HINT)
    compare(k_all, exp_k, what=f"the keys returned by update() {label}", hint=_KV_HINT,
            mistakes=_kv_mistakes(history_k, k, exp_v), atol=0, rtol=0)
    compare(v_all, exp_v, what=f"the values returned by update() {label}", hint=_KV_HINT,
            mistakes=_kv_mistakes(history_v, v, exp_k), atol=0, rtol=0)
    expect(pos != 0, f"after update() {label}, cache.pos is still 0: `pos` is never advanced.",
           "After writing, add the number of new positions, t_new = k.shape[2], to self.pos.")
    expect(pos == total, f"after update() {label}, cache.pos is {pos}; it should count the {total} cached positions.",
           "Advance pos by the number of new positions, t_new = k.shape[2].")
    history_k.append(k)
    history_v.append(v)


def _kv_schedule(KVCache, b, h, d, steps, max_len, dtype, seed, label):
    cache = KVCache(max_len)
    expect(_pos(cache, "a new cache") == 0, "a new cache should have pos == 0.", "Set self.pos = 0 in __init__.")
    hk, hv = [], []
    for i, t in enumerate(steps):
        k = _randn(b, h, t, d, seed=seed + 2 * i, dtype=dtype)
        v = _randn(b, h, t, d, seed=seed + 2 * i + 1, dtype=dtype)
        _kv_step(cache, k, v, hk, hv, f"#{i + 1} ({label}, {t} new position{'s' if t > 1 else ''} after "
                 f"{sum(steps[:i])})")
    return cache


@exercise("KVCache", lesson="09_kv_cache", forbids=("tantra_lib.KVCache",))
def check_KVCache(KVCache, hidden=False):
    expect(isinstance(KVCache, type), "`KVCache` should be a class.", "Define `class KVCache:` with __init__(self, "
           "max_len), update(self, k, v) and reset(self).")
    # 1) a prompt, then single tokens, then a chunk
    cache = _kv_schedule(KVCache, 2, 3, 4, [5, 1, 1, 3], 12, torch.float32, 100, "B=2, H=3, D=4")
    # 2) reset: the next update starts from an empty cache again
    expect(callable(getattr(cache, "reset", None)), "the cache has no reset() method.",
           "def reset(self): self.pos = 0")
    cache.reset()
    pos = _pos(cache, "after reset()")
    expect(pos == 0, f"after reset(), cache.pos is {pos}; reset() should forget every cached position.",
           "Set self.pos = 0 in reset() (the buffers can stay: they are overwritten).")
    k, v = _randn(2, 3, 2, 4, seed=150), _randn(2, 3, 2, 4, seed=151)
    _kv_step(cache, k, v, [], [], "right after reset()")
    # 3) full: one position too many must not pass silently
    cache = KVCache(6)
    k, v = _randn(1, 2, 6, 3, seed=160), _randn(1, 2, 6, 3, seed=161)
    _kv_step(cache, k, v, [], [], "filling a max_len=6 cache")
    k, v = _randn(1, 2, 1, 3, seed=162), _randn(1, 2, 1, 3, seed=163)
    try:
        cache.update(k, v)
    except ValueError:
        pass
    else:
        raise Mistake("update() on a full cache (6 cached, max_len=6) did not raise ValueError: a model would "
                      "then read positions it has no embedding for.",
                      "Check `self.pos + t_new > self.max_len` first and raise ValueError('KV cache is full ...').")
    if hidden:
        _kv_schedule(KVCache, 1, 1, 8, [1] * 7, 7, torch.float64, 200, "float64, one position at a time to max_len")
        _kv_schedule(KVCache, 3, 2, 5, [4, 4, 1], 9, torch.bfloat16, 300, "bfloat16")
        _kv_schedule(KVCache, 2, 4, 2, [9], 9, torch.float32, 400, "the whole max_len in one update")


# ----------------------------------------------------------------------------- CachedMultiHeadAttention

_ATTN_HINT = ("q, k, v from qkv_proj; k, v = cache.update(k, v); the t new queries sit at positions "
              "pos..pos+t-1, so query i may attend to keys j <= pos + i: "
              "mask = torch.ones(t, T_total, dtype=torch.bool).tril(diagonal=T_total - t).")


def _attn_parts(sd, n_heads, x):
    """q, k, v of every position, (B, H, T, D) each, in float64, from the layer's weights."""
    w, b = sd["qkv_proj.weight"].double(), sd.get("qkv_proj.bias")
    qkv = x.double() @ w.T + (b.double() if b is not None else 0.0)  # (B, T, 3C)
    bsz, t, c3 = qkv.shape
    c = c3 // 3
    parts = qkv.split(c, dim=-1)
    return [p.reshape(bsz, t, n_heads, c // n_heads).transpose(1, 2) for p in parts]  # (B, H, T, D)


def _attend(sd, q, k, v, allowed):
    """softmax(q k^T / sqrt(D)) v over the allowed (t_q, t_k) pairs, then the output projection."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, t_q, t_k)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(dim=-1) @ v  # (B, H, t_q, D)
    bsz, h, t, d = out.shape
    out = out.transpose(1, 2).reshape(bsz, t, h * d)  # (B, t_q, C)
    b = sd.get("out_proj.bias")
    return out @ sd["out_proj.weight"].double().T + (b.double() if b is not None else 0.0)


def _chunk_variants(sd, n_heads, x, s, e, cached=True):
    """The right output for positions s..e-1 given 0..s-1 cached, and typical wrong ones."""
    q, k, v = _attn_parts(sd, n_heads, x)
    t = e - s
    dev = x.device
    i = torch.arange(t, device=dev)[:, None]
    j = torch.arange(e, device=dev)[None, :]
    right = _attend(sd, q[:, :, s:e], k[:, :, :e], v[:, :, :e], j <= s + i)
    not_offset = _attend(sd, q[:, :, s:e], k[:, :, :e], v[:, :, :e], j <= i)
    no_mask = _attend(sd, q[:, :, s:e], k[:, :, :e], v[:, :, :e], j < e)
    jj = torch.arange(t, device=dev)[None, :]
    only_new = _attend(sd, q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], jj <= i)
    mistakes = []
    if s > 0:
        mistakes.append((only_new, "attended only to the new keys/values: use the ones cache.update(k, v) returns "
                         "(everything cached).", _ATTN_HINT))
        mistakes.append((not_offset, "the causal mask is not offset by the cached positions: new query i was "
                         "only allowed keys 0..i instead of 0..pos+i.", _ATTN_HINT))
    if t > 1:
        where = " inside a multi-token step (a prompt goes into the cache all at once)" if cached else ""
        mistakes.append((no_mask, f"no causal mask{where}: each query also saw the tokens after it.", _ATTN_HINT))
    return right, mistakes


def _random_mha_state(d_model, n_heads, dtype, seed):
    g = _gen(seed)
    scale = 1.0 / math.sqrt(d_model)
    sd = {
        "qkv_proj.weight": torch.randn(3 * d_model, d_model, generator=g, dtype=torch.float64) * scale * 2,
        "qkv_proj.bias": torch.randn(3 * d_model, generator=g, dtype=torch.float64) * 0.1,
        "out_proj.weight": torch.randn(d_model, d_model, generator=g, dtype=torch.float64) * scale,
        "out_proj.bias": torch.randn(d_model, generator=g, dtype=torch.float64) * 0.1,
    }
    return {k: v.to(dtype).to(get_device()) for k, v in sd.items()}


def _build(cls, *args, what):
    with torch.random.fork_rng(devices=[]):  # the learner's init must not move the global RNG
        torch.manual_seed(0)
        m = call(cls, *args, name=what)
    expect(isinstance(m, nn.Module), f"`{what}(...)` is not an nn.Module.",
           f"Write `class {what}(nn.Module):` and call super().__init__() first.")
    return m


def _load(model, sd, what):
    load_weights(model, sd, what=what,
                 names_hint="Use the submodule names of the exercise (they make the weights load across).",
                 shapes_hint="Compare the shapes of your Linear layers with the exercise text.")


def _mha_case(cls, d_model, n_heads, bsz, steps, dtype, seed, label):
    from ..kv_cache import KVCache

    m = _build(cls, d_model, n_heads, what="CachedMultiHeadAttention").to(device=get_device(), dtype=dtype)
    sd = _random_mha_state(d_model, n_heads, dtype, seed)
    _load(m, sd, "CachedMultiHeadAttention")
    m.eval()
    total = sum(steps)
    x = _randn(bsz, total, d_model, seed=seed + 1, dtype=dtype)
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 6e-2
    with torch.no_grad():
        # 1) no cache: plain causal self-attention
        full = call(m, x, name="CachedMultiHeadAttention")
        right, mistakes = _chunk_variants(sd, n_heads, x, 0, total, cached=False)
        compare(full, right.to(dtype), what=f"forward(x) without a cache ({label}, T={total})", hint=_ATTN_HINT,
                mistakes=mistakes, atol=tol, rtol=tol)
        # 2) the same positions again, chunk by chunk through a cache
        cache = KVCache(total + 2)
        s = 0
        for t in steps:
            e = s + t
            what = f"forward(x[:, {s}:{e}], cache=cache) with {s} position{'s' if s != 1 else ''} cached ({label})"
            out = call(m, x[:, s:e], cache=cache, name="CachedMultiHeadAttention")
            if isinstance(out, torch.Tensor) and out.ndim == 3 and out.shape[1] == e and e != t:
                raise Mistake(f"{what} returned {e} rows, one per cached position: only the {t} new queries "
                              "produce outputs. Queries are never cached.",
                              "Keep q for the new positions only; cache just k and v.")
            expect(cache.pos == e, f"{what}: afterwards cache.pos is {cache.pos}, expected {e}: the new keys/values "
                   "were not appended to the cache.", "Call `k, v = cache.update(k, v)` on the split heads.")
            right, mistakes = _chunk_variants(sd, n_heads, x, s, e)
            compare(out, right.to(dtype), what=what, hint=_ATTN_HINT, mistakes=mistakes, atol=tol, rtol=tol)
            s = e


@exercise("CachedMultiHeadAttention", lesson="09_kv_cache",
          forbids=("tantra_lib.MultiHeadAttention", "tantra_lib.TransformerBlock", "tantra_lib.GPT"))
def check_CachedMultiHeadAttention(CachedMultiHeadAttention, hidden=False):
    from ..multi_head import MultiHeadAttention

    cls = CachedMultiHeadAttention
    expect(isinstance(cls, type), "`CachedMultiHeadAttention` should be a class.",
           "Define `class CachedMultiHeadAttention(nn.Module):`.")
    if issubclass(cls, MultiHeadAttention):
        raise ShortcutUsed("CachedMultiHeadAttention", "tantra_lib.MultiHeadAttention")
    _mha_case(cls, 16, 4, 2, [4, 1, 1, 3], torch.float32, 500, "d_model=16, 4 heads")
    if hidden:
        _mha_case(cls, 24, 3, 1, [1, 1, 1, 1, 1], torch.float64, 600, "float64, one token at a time from empty")
        _mha_case(cls, 32, 8, 3, [7, 2, 1], torch.float32, 700, "d_model=32, 8 heads, batch 3")
        _mha_case(cls, 16, 2, 2, [3, 1, 2], torch.bfloat16, 800, "bfloat16")


# ----------------------------------------------------------------------------- generate

_GEN_HINT = ("caches = one KVCache(block_size) per block; the first step feeds the whole (cropped) prompt, every "
             "later step only the newest token: logits, _ = model(idx[:, -1:], caches=caches); next = "
             "logits[:, -1].argmax(-1). Once the text outgrows block_size, reset the caches and feed the last "
             "block_size tokens again.")


def _tiny_model(vocab, block, seed):
    """A small random tantra_lib.GPT whose greedy text does not just repeat one token.

    With GPT-2's small init (or any mild random weights) the tied lm_head mostly predicts the
    token it was just fed, and a loop that repeats one token cannot show most mistakes. Large
    block weights, small token embeddings and clear position embeddings make the greedy text
    depend on the context and on the positions."""
    from ..gpt import GPT, GPTConfig

    with torch.random.fork_rng(devices=[]):
        model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, d_model=16))
    g = _gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("weight") and "ln" in name.split(".")[-2]:
                p.copy_(1.0 + 0.3 * r)
            elif name.endswith("bias"):
                p.copy_(0.5 * r)
            elif name.startswith("tok_emb"):
                p.copy_(0.3 * r)
            elif name.startswith("pos_emb"):
                p.copy_(r)
            else:
                p.copy_(4.0 * r / math.sqrt(p.shape[-1]))
    return model.to(get_device()).eval()


@torch.no_grad()
def _greedy_naive(model, idx, n):
    """The naive loop: the whole (cropped) prefix through the model at every step."""
    block = model.config.block_size
    for _ in range(n):
        logits = model(idx[:, -block:])[0][:, -1]  # (B, V)
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


@torch.no_grad()
def _greedy_variant(model, idx, n, *, positions_from_zero=False, first_logits=False):
    """A cached loop with one typical mistake (only while the text fits in block_size)."""
    from ..kv_cache import KVCache

    caches = [KVCache(model.config.block_size) for _ in model.blocks]
    new = idx
    for _ in range(n):
        pos = caches[0].pos
        t = new.shape[1]
        start = 0 if positions_from_zero else pos
        x = model.tok_emb(new) + model.pos_emb(torch.arange(start, start + t, device=idx.device))
        mask = None if t == 1 else torch.ones(t, pos + t, dtype=torch.bool, device=idx.device).tril(diagonal=pos)
        for block, cache in zip(model.blocks, caches):
            x = block(x, mask=mask, cache=cache)
        logits = model.lm_head(model.ln_f(x))[:, 0 if first_logits else -1]
        new = logits.argmax(-1, keepdim=True)
        idx = torch.cat([idx, new], dim=1)
    return idx


class _Counter:
    """Records how many positions go through the first block at each call."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self.handle = model.blocks[0].register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        self.sizes.append(int(x.shape[1]))


def _refuse(name):
    def refused(*args, **kwargs):
        raise ShortcutUsed("generate", name)

    return refused


def _run_generate(generate, model, idx, n, use_cache, label):
    counter = _Counter(model)
    # the model's own generation loop is the shortcut: refuse it on this instance
    model.generate = _refuse("tantra_lib.GPT.generate")
    model.next_token_logits = _refuse("tantra_lib.GPT.next_token_logits")
    try:
        out = call(generate, model, idx, n, use_cache=use_cache, name="generate")
    except (ValueError, RuntimeError, IndexError) as err:
        if idx.shape[1] + n > model.config.block_size:
            raise Mistake(f"generate({label}) crashed once the text outgrew block_size={model.config.block_size} "
                          f"({type(err).__name__}: {str(err)[:120]}).",
                          "Crop like the naive loop: when idx is longer than block_size, reset the caches and feed "
                          "idx[:, -block_size:] again.") from None
        raise
    finally:
        counter.handle.remove()
        del model.generate, model.next_token_logits
    what = f"generate({label})"
    expect(isinstance(out, torch.Tensor), f"{what} returned {type(out).__name__}, expected a tensor of ids.",
           "Return idx with the new tokens appended: shape (B, T + max_new_tokens).")
    b, t = idx.shape
    expect(tuple(out.shape) == (b, t + n), f"{what} has shape {tuple(out.shape)}, expected {(b, t + n)}: the prompt "
           "followed by the new tokens.", "Append each new token: idx = torch.cat([idx, next_id], dim=1).")
    expect(out.dtype == torch.long, f"{what} has dtype {out.dtype}, expected torch.long.", _GEN_HINT)
    return out, counter.sizes


def _generate_case(generate, model, idx, n, label, count=True, second_call=False):
    block = model.config.block_size
    expected = _greedy_naive(model, idx, n)
    t0 = idx.shape[1]
    # 1) the naive loop, use_cache=False
    out, sizes = _run_generate(generate, model, idx, n, False, f"{label}, use_cache=False")
    expect(torch.equal(out, expected), f"generate({label}, use_cache=False) is not the greedy continuation: "
           f"{out[0, t0:].tolist()} instead of {expected[0, t0:].tolist()}.",
           "Each step: logits of the last position of model(idx[:, -block_size:]), argmax, append.")
    if count and n > 1:
        expect(all(s == min(t0 + i, block) for i, s in enumerate(sizes[:n])),
               f"generate({label}, use_cache=False) fed {sizes[:n]} positions per step; without the cache it should "
               "feed the whole prefix every time (the naive loop the lesson times).",
               "With use_cache=False, do not create caches: model(idx[:, -block_size:]) at each step.")
    # 2) with the cache: the same tokens, one new position per step
    out, sizes = _run_generate(generate, model, idx, n, True, f"{label}, use_cache=True")
    if not torch.equal(out, expected):
        fits = t0 + n <= block
        if fits and t0 <= block:
            for kwargs, message in (
                    (dict(positions_from_zero=True), "each new token got position 0 (the position embedding was "
                     "not offset by the number of cached positions)."),
                    (dict(first_logits=True), "the next token was read from the logits of the first position, not "
                     "the last (logits[:, -1])."),
            ):
                wrong = _greedy_variant(model, idx, n, **kwargs)
                if torch.equal(out, wrong) and not torch.equal(wrong, expected):
                    raise Mistake(f"generate({label}, use_cache=True): {message}", _GEN_HINT)
        diff = (out != expected).any(0).nonzero().flatten()
        first = int(diff[0]) if len(diff) else -1
        where = ("in the first token, computed from the prompt" if first == t0 else
                 "once the text outgrew block_size" if first > block else f"at position {first}")
        again = ("; were the caches of the previous call reused? Start every call with new (or reset) caches"
                 if second_call else "")
        raise Mistake(f"generate({label}, use_cache=True) differs from the uncached greedy text {where}: "
                      f"{out[0, t0:].tolist()} instead of {expected[0, t0:].tolist()}{again}.", _GEN_HINT)
    if count:
        expect(len(sizes) > 0, f"generate({label}, use_cache=True) never ran the model's blocks.", _GEN_HINT)
        expect(sizes[0] == min(t0, block), f"generate({label}, use_cache=True) first fed {sizes[0]} positions; the "
               f"first step should feed the whole prompt ({min(t0, block)}).", _GEN_HINT)
        later = sizes[1:n]
        expect(all(s == 1 for s in later),
               f"generate({label}, use_cache=True) fed {later} positions in the steps after the prompt: with a cache "
               "each step should feed only the newest token (1 position), otherwise the loop stays quadratic.",
               _GEN_HINT)


@exercise("generate", lesson="09_kv_cache", forbids=("tantra_lib.sample_next_token",))
def check_generate(generate, hidden=False):
    expect(callable(generate), "`generate` is not a function.",
           "Define `def generate(model, idx, max_new_tokens, use_cache=True):`.")
    model = _tiny_model(17, 12, seed=900)
    prompt = _randint(17, 2, 4, seed=901)
    _generate_case(generate, model, prompt, 7, "a (2, 4) prompt, 7 new tokens")
    # a second call must start from empty caches
    _generate_case(generate, model, _randint(17, 2, 3, seed=902), 5, "a second call, another prompt",
                   second_call=True)
    # past block_size: crop like the naive loop
    _generate_case(generate, model, prompt[:1], 12, "a (1, 4) prompt, 12 new tokens past block_size=12",
                   count=False)
    if hidden:
        model = _tiny_model(29, 10, seed=910)
        _generate_case(generate, model, _randint(29, 3, 1, seed=911), 9, "a batch of 3 one-token prompts")
        _generate_case(generate, model, _randint(29, 1, 14, seed=912), 3, "a prompt longer than block_size",
                       count=False)
        _generate_case(generate, model, _randint(29, 1, 5, seed=913), 0, "max_new_tokens=0", count=False)
        _generate_case(generate, model, _randint(29, 2, 10, seed=914), 1, "a prompt of exactly block_size")


def _randint(high, *shape, seed=0):
    return torch.randint(0, high, shape, generator=_gen(seed)).to(get_device())
