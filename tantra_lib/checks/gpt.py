"""Checks of lesson 08_gpt: ``cross_entropy_loss``, ``GPT``, ``sample_next_token``.

* ``cross_entropy_loss`` is compared with PyTorch's cross-entropy (computed in float64) on
  (B, T, V) and (N, V) logits, extreme logits and other dtypes; the outputs of the typical
  mistakes (no minus sign, a sum, probabilities or raw logits in place of log-probabilities,
  the wrong axis, no mean over positions) are named, and the gradient must reach the logits.
* ``GPT`` is built with a small ``GPTConfig``; it must have the reference's submodules and
  parameter names (so a reference ``tantra_lib.GPT``'s weights load into it, and its own
  weights load into the reference), a tied lm_head, GPT-2 initialisation, and the logits and
  loss of an independent forward pass written here with plain tensor operations. Outputs
  of the typical mistakes (no final LayerNorm, no position embedding, no causal mask,
  post-LN blocks, targets shifted twice) are named; a future leak is tested directly.
* ``sample_next_token`` is run on many copies of the same logits with a seeded generator and
  its token frequencies are compared with the right distribution (and with the
  distributions of the typical mistakes: temperature multiplied, ignored, top-k keeping the
  smallest, masked logits filled with 0 instead of -inf, ...); greedy cases are exact, and
  tokens outside the top k must never come out.

Tested against wrong and right implementations in tests/test_checks_gpt.py.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..device import get_device
from ..shortcut_guard import _LIB_DIR, ShortcutUsed, _is_internal
from ._core import Mistake, call, compare, exercise, expect, load_weights

__all__ = ["check_cross_entropy_loss", "check_GPT", "check_sample_next_token"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype).to(get_device())


def _randint(high, *shape, seed=0):
    return torch.randint(0, high, shape, generator=_gen(seed)).to(get_device())


# ----------------------------------------------------------------------------- forbidding library helpers
# Some shortcuts are plain Python functions or methods of tantra_lib (GPT.generate, the sampler
# it uses). They are caught by their code object: when a torch function runs while one of them
# is on the stack, called from learner code, the learner took the shortcut.


class _ForbidCode(TorchFunctionMode):
    def __init__(self, exercise: str, codes: dict):
        super().__init__()
        self.exercise = exercise
        self.codes = codes  # code object -> dotted name

    def __torch_function__(self, func, types, args=(), kwargs=None):
        frame = sys._getframe(1)
        while frame is not None:
            name = self.codes.get(frame.f_code)
            if name is not None:
                caller = frame.f_back
                while caller is not None and _is_internal(caller.f_code.co_filename):
                    caller = caller.f_back
                if caller is not None:
                    fn = caller.f_code.co_filename
                    real = os.path.realpath(fn) if not fn.startswith("<") else fn
                    if not real.startswith(_LIB_DIR):
                        raise ShortcutUsed(self.exercise, name)
            frame = frame.f_back
        return func(*args, **(kwargs or {}))


def _library_samplers() -> dict:
    """Code objects of tantra_lib's own generation/sampling helpers -> their names."""
    from .. import gpt

    codes = {}
    for name, obj in (("tantra_lib.gpt.sample_from_logits", getattr(gpt, "sample_from_logits", None)),
                      ("tantra_lib.GPT.generate", getattr(gpt.GPT, "generate", None)),
                      ("tantra_lib.GPT.next_token_logits", getattr(gpt.GPT, "next_token_logits", None))):
        if obj is not None:
            codes[inspect.unwrap(obj).__code__] = name
    return codes


@contextlib.contextmanager
def forbid_library_samplers(exercise: str):
    """Learner code that calls tantra_lib's sampler or GPT.generate raises ShortcutUsed."""
    with _ForbidCode(exercise, _library_samplers()):
        yield


# ----------------------------------------------------------------------------- cross_entropy_loss

FORBID_CE = (
    "torch.nn.functional.cross_entropy",
    "torch.nn.CrossEntropyLoss",
    "torch.nn.functional.nll_loss",
    "torch.nn.NLLLoss",
    "torch._C._nn.cross_entropy_loss",
    "torch._C._nn.nll_loss",
    "torch._C._nn.nll_loss_nd",
    "tantra_lib.cross_entropy_loss",
)

_CE_HINT = ("loss = -mean over every position of log_softmax(logits)[target]: flatten to (N, V) and (N,), "
            "take log_softmax along the last dim, pick each row's target column, average, negate.")


def _ce_mistakes(logits, targets):
    """Outputs of typical wrong cross-entropies (all in float64)."""
    lp = F.log_softmax(logits, dim=-1)
    picked = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...,) log p(target)
    p = F.softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    raw = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = [
        (picked.mean(), "has the wrong sign: the mean log-probability is negative, the loss is its negation.",
         "Put a minus sign in front: loss = -mean(log p(target))."),
        (-picked.sum(), "sums the per-position losses instead of averaging them (the loss would grow with the "
         "batch size).", "Divide by the number of positions: use .mean()."),
        (-p.mean(), "uses probabilities where log-probabilities belong.", "Take log_softmax, not softmax."),
        (-raw.mean(), "uses the raw logits as log-probabilities (no log-softmax).",
         "Normalise first: log_softmax(logits) = logits - logsumexp(logits)."),
        (picked.mean().neg().exp(), "returns the perplexity exp(loss), not the loss.", _CE_HINT),
    ]
    if logits.ndim == 3:
        b, t, v = logits.shape
        out.append((-picked.sum(-1).mean(), "averages over the batch but sums over the positions.",
                    "Average over all B*T positions: flatten (B, T) into one axis first."))
        lp_t = F.log_softmax(logits, dim=1)  # normalised over positions: wrong axis
        out.append((-lp_t.gather(-1, targets.unsqueeze(-1)).mean(), "takes the log-softmax along dim 1 (the "
                    "positions) instead of the last dim (the vocabulary).", "Use dim=-1."))
        if int(targets.max()) < t:
            wrong = lp.gather(1, targets.unsqueeze(-1).expand(b, t, v))[..., :1].squeeze(-1)
            out.append((-wrong.mean(), "picks the log-probabilities along the wrong axis (positions, not "
                        "vocabulary).", "Gather along the last dim: log_p.gather(-1, targets.unsqueeze(-1))."))
    else:
        n, v = logits.shape
        if int(targets.max()) < n and n <= v:
            wrong = lp[targets, torch.arange(n, device=logits.device)]  # row = target, column = position
            out.append((-wrong.mean(), "indexes log_p[targets, rows]: rows and columns swapped.",
                        "Pick log_p[torch.arange(N), targets] (row i, column targets[i])."))
        out.append((-F.log_softmax(logits, dim=0).gather(-1, targets.unsqueeze(-1)).mean(),
                    "takes the log-softmax along dim 0 (the rows) instead of the last dim (the vocabulary).",
                    "Use dim=-1."))
    return out


def _check_ce_case(cross_entropy_loss, logits, targets, label):
    try:
        out = call(cross_entropy_loss, logits, targets, name="cross_entropy_loss")
    except (IndexError, RuntimeError) as err:
        if logits.ndim == 3:
            raise Mistake(f"cross_entropy_loss({label}) crashed ({type(err).__name__}: {str(err)[:120]}). It must "
                          "also take (B, T, V) logits with (B, T) targets.",
                          "Flatten first: logits.reshape(-1, V) and targets.reshape(-1).") from None
        raise
    what = f"cross_entropy_loss({label})"
    ref = F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    if isinstance(out, torch.Tensor) and out.shape == targets.shape and out.ndim > 0:
        raise Mistake(f"{what} returned one loss per position, shape {tuple(out.shape)}; the loss is their mean, "
                      "a single number (a 0-dim tensor).", "Finish with .mean().")
    if isinstance(out, torch.Tensor) and out.numel() == 1 and bool(torch.isinf(out).any()) \
            and bool(torch.isfinite(ref)):
        raise Mistake(f"{what} is infinite: log(softmax(x)) underflows to log(0) = -inf when a probability rounds "
                      "to 0.", "Compute log-probabilities directly: (x - m) - log Σ exp(x - m), or log_softmax.")
    low = logits.dtype in (torch.float16, torch.bfloat16)
    tol = 2e-2 if low else 1e-5
    expected = ref.to(logits.dtype)
    if isinstance(out, torch.Tensor) and out.ndim == 1 and out.numel() == 1:
        raise Mistake(f"{what} has shape {tuple(out.shape)}; return a 0-dim tensor (a scalar).",
                      "Use .mean() over every element (not .mean(dim=0)).")
    compare(out, expected, what=what, hint=_CE_HINT,
            mistakes=() if low else _ce_mistakes(logits.double(), targets),
            atol=tol, rtol=tol, check_dtype=not low)


@exercise("cross_entropy_loss", lesson="08_gpt", forbids=FORBID_CE)
def check_cross_entropy_loss(cross_entropy_loss, hidden=False):
    expect(callable(cross_entropy_loss), "`cross_entropy_loss` is not a function.",
           "Define `def cross_entropy_loss(logits, targets):`.")
    cases = [
        (_randn(6, 11, seed=1, scale=2.0), _randint(6, 6, seed=2), "(N, V) = (6, 11) logits"),
        (_randn(2, 5, 7, seed=3, scale=2.0), _randint(5, 2, 5, seed=4), "(B, T, V) = (2, 5, 7) logits"),
        (_randn(3, 4, 10, seed=5, scale=300.0), _randint(10, 3, 4, seed=6), "logits of size ~300"),
    ]
    if hidden:
        cases += [
            (_randn(4, 3, 9, seed=7, dtype=torch.float64), _randint(9, 4, 3, seed=8), "float64 logits"),
            (_randn(13, 5, seed=9).t(), _randint(13, 5, seed=10), "non-contiguous (transposed) logits"),
            (_randn(1, 1, 84, seed=11), _randint(84, 1, 1, seed=12), "a single position, V=84"),
            (_randn(2, 8, 300, seed=13, dtype=torch.bfloat16), _randint(300, 2, 8, seed=14), "bfloat16 logits"),
            (torch.zeros(3, 2, 84, device=get_device()), _randint(84, 3, 2, seed=15), "uniform logits (loss ln 84)"),
        ]
    for logits, targets, label in cases:
        _check_ce_case(cross_entropy_loss, logits, targets, label)
    # the gradient must reach the logits: d loss / d logits = (softmax - one_hot) / N
    logits = _randn(2, 3, 5, seed=16).requires_grad_()
    targets = _randint(5, 2, 3, seed=17)
    loss = cross_entropy_loss(logits, targets)
    expect(isinstance(loss, torch.Tensor) and loss.requires_grad, "the loss does not carry gradients.",
           "Stay in torch operations; do not call .item(), .detach() or torch.tensor(...) on the loss.")
    loss.backward()
    expected = (F.softmax(logits.detach().double(), -1) - F.one_hot(targets, 5).double()) / 6
    compare(logits.grad, expected.float(), what="the gradient of the loss with respect to the logits",
            hint=_CE_HINT, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- GPT

_GPT_HINT = ("logits = lm_head(ln_f(blocks(tok_emb(idx) + pos_emb(positions), causal mask))) with lm_head.weight "
             "tied to tok_emb.weight; loss = cross-entropy of logits (B*T, V) against targets (B*T,).")


def _functional_gpt(sd, cfg, idx, *, ln_f=True, positions=True, causal=True, norm_first=True):
    """The GPT forward pass from a state dict with plain tensor operations (float64).

    idx (B, T) -> logits (B, T, vocab). The flags switch off one piece each, to reproduce the
    output of a typical mistake."""
    def w(name):
        t = sd.get(name)
        return None if t is None else t.double()

    def ln(x, prefix):
        return F.layer_norm(x, x.shape[-1:], w(prefix + ".weight"), w(prefix + ".bias"), 1e-5)

    def linear(x, prefix):
        b = w(prefix + ".bias")
        return x @ w(prefix + ".weight").T + (0.0 if b is None else b)

    bsz, t = idx.shape
    h = cfg.n_head
    x = w("tok_emb.weight")[idx]  # (B, T, C)
    if positions:
        x = x + w("pos_emb.weight")[:t]
    allowed = torch.ones(t, t, dtype=torch.bool, device=idx.device)
    if causal:
        allowed = allowed.tril()
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."

        def attn(z, p=p):
            q, k, v = linear(z, p + "attn.qkv_proj").chunk(3, dim=-1)  # 3 x (B, T, C)
            q, k, v = (a.reshape(bsz, t, h, -1).transpose(1, 2) for a in (q, k, v))  # (B, H, T, D)
            s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            o = s.masked_fill(~allowed, float("-inf")).softmax(-1) @ v  # (B, H, T, D)
            return linear(o.transpose(1, 2).reshape(bsz, t, -1), p + "attn.out_proj")

        def ffn(z, p=p):
            return linear(F.gelu(linear(z, p + "ffn.fc_in")), p + "ffn.fc_out")

        if norm_first:
            x = x + attn(ln(x, p + "ln1"))
            x = x + ffn(ln(x, p + "ln2"))
        else:
            x = ln(x + attn(x), p + "ln1")
            x = ln(x + ffn(x), p + "ln2")
    if ln_f:
        x = ln(x, "ln_f")
    return linear(x, "lm_head")


def _gpt_mistakes(sd, cfg, idx):
    return [
        (_functional_gpt(sd, cfg, idx, ln_f=False), "the final LayerNorm ln_f is not applied before lm_head.",
         "logits = self.lm_head(self.ln_f(x)) after the last block."),
        (_functional_gpt(sd, cfg, idx, positions=False), "the position embeddings are not added: the model cannot "
         "tell the order of the tokens.", "x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=...))."),
        (_functional_gpt(sd, cfg, idx, causal=False), "no causal mask: each position sees the tokens after it "
         "(the very tokens it must predict).", "Pass mask=causal_mask(T, device) to every block."),
        (_functional_gpt(sd, cfg, idx, norm_first=False), "the blocks are post-LN; a GPT uses pre-LN blocks.",
         "TransformerBlock(..., norm_first=True)."),
    ]


def _randomise(model, seed):
    """Give every parameter distinct, non-trivial values (LayerNorms included), in place."""
    g = _gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("weight") and ("ln" in name.split(".")[-2]):
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            elif p.ndim == 2 and ("emb" in name):
                p.copy_(0.5 * r)
            else:
                p.copy_(r / math.sqrt(p.shape[-1]))


def _build_gpt(GPT, cfg):
    with torch.random.fork_rng(devices=[]):  # the learner's init must not move the global RNG
        torch.manual_seed(0)
        m = call(GPT, cfg, name="GPT")
    expect(isinstance(m, nn.Module), "`GPT(config)` is not an nn.Module.",
           "Write `class GPT(nn.Module):` and call super().__init__() first.")
    missing = [n for n in ("tok_emb", "pos_emb", "blocks", "ln_f", "lm_head") if not hasattr(m, n)]
    expect(not missing, f"GPT has no submodule(s) {missing}.",
           "Name them tok_emb, pos_emb, blocks, ln_f, lm_head, as in the exercise.")
    return m


def _load_gpt(model, sd, what="your GPT"):
    load_weights(model, sd, what=what,
                 names_hint="Use the submodule names of the exercise (tok_emb, pos_emb, blocks, ln_f, lm_head) and "
                            "tantra_lib's pieces; a buffer such as a causal mask needs persistent=False.",
                 shapes_hint="Build every piece from the config: vocab_size, block_size, n_layer, n_head, d_model, "
                             "d_ff, bias.")


def _check_init(GPT, GPTConfig):
    """GPT-2 initialisation, judged by the spread of the fresh weights of a mid-sized model."""
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, d_model=64)
    m = _build_gpt(GPT, cfg)
    res = 0.02 / math.sqrt(2 * cfg.n_layer)

    def std(t):
        return float(t.detach().double().std())

    def near(value, target):
        return abs(value - target) <= 0.15 * target

    emb = std(m.tok_emb.weight)
    expect(near(emb, 0.02), f"the token embedding has std {emb:.3g} after __init__; GPT-2 initialises it "
           "normal(0, 0.02) (PyTorch's nn.Embedding default is std 1).",
           "In __init__, nn.init.normal_(module.weight, 0.0, 0.02) for every nn.Embedding and nn.Linear.")
    qkv = std(m.blocks[0].attn.qkv_proj.weight)
    expect(near(qkv, 0.02), f"blocks[0].attn.qkv_proj.weight has std {qkv:.3g} after __init__; GPT-2 initialises "
           "every Linear normal(0, 0.02) (the std of PyTorch's default is about 1/sqrt(3·fan_in)).",
           "Loop over self.modules() and re-initialise each nn.Linear: normal_(weight, 0, 0.02), zeros_(bias).")
    for name in ("attn.out_proj", "ffn.fc_out"):
        w = std(m.blocks[0].get_submodule(name).weight)
        expect(near(w, res), f"blocks[0].{name}.weight has std {w:.3g}; the projections that write into the "
               f"residual stream get 0.02/sqrt(2·n_layer) = {res:.3g} in GPT-2.",
               "After the normal(0, 0.02) pass, re-initialise attn.out_proj and ffn.fc_out of every block with "
               "std 0.02 / math.sqrt(2 * config.n_layer).")
    for name, mod in m.named_modules():
        if isinstance(mod, nn.Linear) and mod.bias is not None:
            expect(float(mod.bias.detach().abs().max()) == 0.0, f"{name}.bias is not zero after __init__.",
                   "nn.init.zeros_(module.bias) for every nn.Linear that has one.")


def _gpt_case(GPT, GPTConfig, RefGPT, cfg, bsz, t, dtype, seed, label):
    dev = get_device()
    m = _build_gpt(GPT, cfg)
    # 1) the tie: one Parameter for reading tokens in and scoring them out
    expect(m.lm_head.weight is m.tok_emb.weight or m.lm_head.weight.data_ptr() == m.tok_emb.weight.data_ptr(),
           "lm_head.weight is not tied to tok_emb.weight: they are two separate matrices.",
           "After creating both: self.lm_head.weight = self.tok_emb.weight (the same Parameter object).")
    # 2) a reference GPT with non-trivial weights; they must load into the learner's model
    with torch.random.fork_rng(devices=[]):
        ref = RefGPT(cfg)
    _randomise(ref, seed)
    ref = ref.to(device=dev, dtype=dtype).eval()
    sd = ref.state_dict()
    m = m.to(device=dev, dtype=dtype)
    _load_gpt(m, sd)
    m.eval()
    idx = _randint(cfg.vocab_size, bsz, t, seed=seed + 1)
    targets = _randint(cfg.vocab_size, bsz, t, seed=seed + 2)
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2
    what = f"GPT forward ({label}, idx {tuple(idx.shape)})"
    with torch.no_grad():
        out = call(m, idx, targets, name="GPT")
        expect(isinstance(out, tuple) and len(out) == 2, f"{what} returned {type(out).__name__}, expected a pair "
               "(logits, loss).", "End forward with `return logits, loss`.")
        logits, loss = out
        expected = _functional_gpt(sd, cfg, idx)  # (B, T, V)
        if isinstance(logits, torch.Tensor) and logits.ndim == 3 and logits.shape[1] == 1 and t > 1:
            raise Mistake(f"{what} returned logits for the last position only; return them for every position "
                          "(B, T, vocab), training needs them all.", _GPT_HINT)
        # a future leak is named before anything else: change the last tokens, the first logits must not move
        if t > 2 and isinstance(logits, torch.Tensor) and logits.shape == expected.shape:
            idx2 = idx.clone()
            idx2[:, t // 2:] = (idx2[:, t // 2:] + 1) % cfg.vocab_size
            logits2 = call(m, idx2, targets, name="GPT")[0]
            early = slice(0, t // 2)
            same = not isinstance(logits2, torch.Tensor) or logits2.shape != logits.shape or torch.allclose(
                logits[:, early].double(), logits2[:, early].double(), atol=tol, rtol=tol)
            expect(same,
                   f"{what}: changing the tokens after position {t // 2 - 1} changed the logits before it: the "
                   "future leaks into the past (no causal mask).", "Pass mask=causal_mask(T, device) to every block.")
        compare(logits, expected.to(dtype), what=f"the logits of {what}", hint=_GPT_HINT,
                mistakes=_gpt_mistakes(sd, cfg, idx) if dtype != torch.bfloat16 else (), atol=tol, rtol=tol)
        exp_loss = F.cross_entropy(expected.reshape(bsz * t, -1), targets.reshape(-1))
        shifted = F.cross_entropy(expected[:, :-1].reshape(-1, cfg.vocab_size), targets[:, 1:].reshape(-1)) \
            if t > 1 else None
        compare(loss, exp_loss.to(dtype), what=f"the loss of {what}", hint=_GPT_HINT,
                mistakes=[(shifted, "shifts the targets again inside forward: targets are already the next tokens "
                           "(y = x shifted by one).", "Compare logits[:, t] with targets[:, t] directly.")],
                atol=tol, rtol=tol)
        # 3) without targets: the same logits and loss None
        logits_only, none = call(m, idx, name="GPT")
        if isinstance(logits_only, torch.Tensor) and logits_only.ndim == 3 and logits_only.shape[1] == 1 and t > 1:
            raise Mistake(f"{what} without targets returned logits for the last position only; return them for "
                          "every position (B, T, vocab) either way (generate just reads logits[:, -1]).", _GPT_HINT)
        expect(none is None, f"forward(idx) without targets returned a loss ({type(none).__name__}); it should "
               "return (logits, None).", "def forward(self, idx, targets=None): ... loss = None if targets is None")
        compare(logits_only, logits, what=f"the logits of {what} without targets", hint=_GPT_HINT,
                atol=tol, rtol=tol)
    # 4) and the other way: the learner's own weights run in the reference give the same logits
    m2 = _build_gpt(GPT, cfg).to(device=dev, dtype=dtype).eval()
    _randomise(m2, seed + 5)
    _load_gpt(ref, m2.state_dict(), what="the reference GPT (loading your weights)")
    with torch.no_grad():
        compare(call(m2, idx, name="GPT")[0], ref(idx)[0], what=f"{what} with your model's own weights",
                hint=_GPT_HINT, atol=tol, rtol=tol)


@exercise("GPT", lesson="08_gpt", forbids=("tantra_lib.GPT",))
def check_GPT(GPT, hidden=False):
    from ..gpt import GPT as RefGPT
    from ..gpt import GPTConfig

    expect(isinstance(GPT, type), "`GPT` should be a class.", "Define `class GPT(nn.Module):`.")
    expect(not issubclass(GPT, RefGPT), "your GPT subclasses tantra_lib.GPT.", "Build it from the blocks.")
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, d_model=16)
    _gpt_case(GPT, GPTConfig, RefGPT, cfg, 2, 8, torch.float32, 10, "vocab 13, 2 layers")
    # longer than block_size: a clear ValueError, not an IndexError deep inside
    m = _build_gpt(GPT, cfg).to(get_device())
    try:
        call(m, _randint(13, 1, 9, seed=20), name="GPT")
    except ValueError:
        pass
    except Exception as err:
        raise Mistake(f"an input of 9 tokens with block_size=8 raised {type(err).__name__}; it should raise "
                      "ValueError.", "Check T <= config.block_size at the top of forward.") from None
    else:
        raise Mistake("an input of 9 tokens with block_size=8 ran without error; there is no position embedding "
                      "past block_size, so forward should raise ValueError.",
                      "if T > self.config.block_size: raise ValueError(...)")
    _check_init(GPT, GPTConfig)
    if hidden:
        _gpt_case(GPT, GPTConfig, RefGPT, GPTConfig(vocab_size=29, block_size=12, n_layer=3, n_head=4, d_model=24,
                                                     d_ff=40, bias=False), 3, 7, torch.float32, 30,
                  "3 layers, d_ff=40, no biases")
        _gpt_case(GPT, GPTConfig, RefGPT, GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, d_model=8),
                  1, 1, torch.float64, 40, "float64, one token")
        _gpt_case(GPT, GPTConfig, RefGPT, GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, d_model=16,
                                                     dropout=0.1), 2, 6, torch.float32, 50, "dropout=0.1, eval mode")


# ----------------------------------------------------------------------------- sample_next_token

_SAMPLE_HINT = ("temperature 0 -> argmax; else logits / temperature, keep the top_k largest (set the rest to "
                "-inf), softmax, torch.multinomial(probs, 1, generator=generator), squeeze to (B,).")


def _probs(logits, temperature, top_k, fill=float("-inf"), smallest=False, keep=None):
    l = logits.double() / temperature
    if top_k is not None:
        k = min(keep if keep is not None else top_k, l.shape[-1])
        order = l.argsort(dim=-1, descending=not smallest)
        kept = torch.zeros_like(l, dtype=torch.bool).scatter(-1, order[..., :k], True)
        l = l.masked_fill(~kept, fill)
    return l.softmax(-1)


def _sample_mistakes(logits, temperature, top_k):
    out = []
    if temperature != 1:
        out.append((_probs(logits, 1 / temperature, top_k), "multiplies the logits by the temperature instead of "
                    "dividing: a low temperature should sharpen the distribution, a high one flatten it.",
                    "logits / temperature."))
        out.append((_probs(logits, 1.0, top_k), "ignores the temperature.", "Divide the logits by temperature."))
    if top_k is not None and top_k < logits.shape[-1]:
        out.append((_probs(logits, temperature, top_k, smallest=True), "keeps the k *smallest* logits instead of "
                    "the k largest.", "torch.topk(logits, k) returns the largest (largest=True is the default)."))
        out.append((_probs(logits, temperature, top_k, fill=0.0), "fills the dropped logits with 0 instead of "
                    "-inf, so the tokens outside the top k keep a chance.", "masked_fill(..., float('-inf'))."))
        out.append((_probs(logits, temperature, None), "ignores top_k: tokens outside the k likeliest are sampled.",
                    "Set every logit below the k-th largest to -inf before the softmax."))
        if top_k > 1:
            out.append((_probs(logits, temperature, top_k, keep=top_k - 1), "keeps only k-1 tokens (the k-th "
                        "likeliest is dropped: <= where < belongs).",
                        "Drop logits strictly below the k-th largest: logits < kth."))
        out.append((_probs(logits, temperature, top_k, keep=top_k + 1), "keeps k+1 tokens.",
                    "The k-th largest value is torch.topk(logits, k).values[..., -1:]."))
    return out


def _call_sampler(sample_next_token, logits, temperature, top_k, generator, label):
    try:
        with forbid_library_samplers("sample_next_token"):
            out = call(sample_next_token, logits, temperature, top_k, generator, name="sample_next_token")
    except RuntimeError as err:
        text = str(err)
        if "probability" in text or "multinomial" in text.lower():
            raise Mistake(f"sample_next_token({label}) crashed in torch.multinomial: {text[:100]}. Its input must "
                          "be probabilities: finite, non-negative, not all zero.",
                          "Pass softmax(logits / temperature) (after the top-k masking) to torch.multinomial; "
                          "handle temperature == 0 separately with argmax.") from None
        if "selected index k out of range" in text or "out of range" in text:
            raise Mistake(f"sample_next_token({label}) crashed ({text[:80]}): top_k may be larger than the "
                          "vocabulary.", "Use k = min(top_k, logits.shape[-1]).") from None
        raise
    what = f"sample_next_token({label})"
    expect(isinstance(out, torch.Tensor), f"{what} returned {type(out).__name__}, expected a tensor of token ids.",
           _SAMPLE_HINT)
    if out.ndim == 2 and out.shape == (logits.shape[0], 1):
        raise Mistake(f"{what} has shape {tuple(out.shape)}; return one id per row, shape (B,) = "
                      f"({logits.shape[0]},).", "torch.multinomial(probs, 1) is (B, 1): .squeeze(-1) it.")
    expect(tuple(out.shape) == (logits.shape[0],), f"{what} has shape {tuple(out.shape)}, expected "
           f"({logits.shape[0]},).", _SAMPLE_HINT)
    expect(out.dtype == torch.long, f"{what} has dtype {out.dtype}; token ids are torch.long (int64).",
           "Do not convert the ids; argmax and multinomial return torch.long.")
    expect(out.device.type == logits.device.type, f"{what} is on {out.device}, the logits on {logits.device}.",
           "Keep everything on logits.device.")
    return out


def _statistics(sample_next_token, row, n, temperature, top_k, seed, label):
    """Sample n times from one row of logits; compare the token frequencies with the right ones."""
    dev = get_device()
    logits = row.to(dev).expand(n, -1).contiguous()
    g = torch.Generator(device=dev).manual_seed(seed)
    ids = _call_sampler(sample_next_token, logits, temperature, top_k, g, label)
    v = row.shape[-1]
    expect(bool(((ids >= 0) & (ids < v)).all()), f"sample_next_token({label}) returned ids outside 0..{v - 1}.",
           _SAMPLE_HINT)
    freq = torch.bincount(ids.cpu(), minlength=v).double() / n
    right = _probs(row.cpu(), temperature, top_k)
    tv = 0.5 * float((freq - right).abs().sum())
    outside = (right == 0) & (freq > 0)
    if tv < 0.03 and not bool(outside.any()):
        return
    if bool(((freq - F.one_hot(row.argmax(), v).double()).abs() < 1e-12).all()):
        raise Mistake(f"sample_next_token({label}) always returned the likeliest token: it takes the argmax instead "
                      "of sampling.", "Sample with torch.multinomial(probs, 1, generator=generator).")
    for probs, message, hint in _sample_mistakes(row.cpu(), temperature, top_k):
        if 0.5 * float((freq - probs).abs().sum()) < 0.03 and 0.5 * float((probs - right).abs().sum()) > 0.06:
            raise Mistake(f"sample_next_token({label}) {message}", hint)
    if bool(outside.any()):
        raise Mistake(f"sample_next_token({label}) sampled tokens {outside.nonzero().flatten().tolist()} that are "
                      f"not among the top {top_k}; they must never come out.", _SAMPLE_HINT)
    raise Mistake(f"sample_next_token({label}): over {n} samples the token frequencies {freq.numpy().round(3)} are "
                  f"far from the probabilities {right.numpy().round(3)} (total variation {tv:.3f}).", _SAMPLE_HINT)


@exercise("sample_next_token", lesson="08_gpt", forbids=("tantra_lib.sample_next_token",))
def check_sample_next_token(sample_next_token, hidden=False):
    expect(callable(sample_next_token), "`sample_next_token` is not a function.",
           "Define `def sample_next_token(logits, temperature=1.0, top_k=None, generator=None):`.")
    dev = get_device()
    logits = _randn(5, 12, seed=60, scale=2.0)
    greedy = logits.argmax(-1)
    # 1) exact cases: temperature 0 is greedy, and so is top_k=1 at any temperature
    g = torch.Generator(device=dev).manual_seed(1)
    out = _call_sampler(sample_next_token, logits, 0.0, None, g, "temperature=0")
    expect(torch.equal(out, greedy), "sample_next_token(temperature=0) is not the argmax of each row: temperature 0 "
           "means greedy decoding.", "if temperature == 0: return logits.argmax(dim=-1)")
    # 2) the generator makes it repeatable (and must be the one used)
    a = _call_sampler(sample_next_token, logits.repeat(40, 1), 1.0, None,
                      torch.Generator(device=dev).manual_seed(7), "a seeded generator")
    b = _call_sampler(sample_next_token, logits.repeat(40, 1), 1.0, None,
                      torch.Generator(device=dev).manual_seed(7), "the same seed again")
    expect(torch.equal(a, b), "two calls with generators seeded alike gave different tokens: the generator is "
           "ignored (the global random state is used instead).",
           "Pass it on: torch.multinomial(probs, 1, generator=generator).")
    # 3) the distributions
    row = torch.tensor([2.0, 1.2, 0.7, 0.3, -0.2, -0.8, -1.5, -2.5])
    n = 20000
    _statistics(sample_next_token, row, n, 1.0, None, 11, "temperature=1")
    _statistics(sample_next_token, row, n, 0.5, None, 12, "temperature=0.5")
    _statistics(sample_next_token, row, n, 2.0, None, 13, "temperature=2")
    _statistics(sample_next_token, row, n, 1.0, 3, 14, "top_k=3")
    _statistics(sample_next_token, row, n, 0.7, 4, 15, "temperature=0.7, top_k=4")
    # 4) top_k=1 leaves one token: greedy at any temperature
    out = _call_sampler(sample_next_token, logits, 1.5, 1, g, "top_k=1")
    expect(torch.equal(out, greedy), "sample_next_token(top_k=1) did not return the likeliest token of each row: "
           "with one token kept there is nothing else to sample.", _SAMPLE_HINT)
    if hidden:
        row2 = torch.randn(30, generator=_gen(70), dtype=torch.float64) * 2
        _statistics(sample_next_token, row2, n, 1.3, 10, 16, "float64 logits, V=30, top_k=10")
        _statistics(sample_next_token, row2, n, 1.0, 50, 17, "top_k=50 > V=30")
        _statistics(sample_next_token, row * 100, 2000, 1e-3, None, 18, "temperature=1e-3 on logits ~100")
        g = torch.Generator(device=dev).manual_seed(2)
        mixed = _randn(64, 84, seed=71, scale=3.0)
        out = _call_sampler(sample_next_token, mixed, 0.0, 5, g, "temperature=0 with top_k=5")
        expect(torch.equal(out, mixed.argmax(-1)), "temperature=0 with top_k=5 is not the argmax.", _SAMPLE_HINT)
        out = _call_sampler(sample_next_token, mixed, 1.0, 2, g, "a batch of 64 different rows, top_k=2")
        top2 = mixed.topk(2, dim=-1).indices
        expect(bool((out[:, None] == top2).any(-1).all()), "with top_k=2 a token outside the two likeliest of its "
               "row was sampled: take the top k of each row (dim=-1), not of the whole batch.", _SAMPLE_HINT)
