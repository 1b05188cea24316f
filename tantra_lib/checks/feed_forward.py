"""Checks of lesson 06_feed_forward: ``gelu``, ``FeedForward``.

``gelu`` is compared with ``F.gelu`` (the exact, erf form) in float64; before a plain "wrong
values" the check tries the usual mistakes (the tanh or sigmoid approximation, ReLU, SiLU, a
missing 1/√2 or 0.5, Φ(x) without the factor x) and names the one the output matches.

``FeedForward`` is instantiated, its layer shapes and parameter count inspected, then seeded
random weights are loaded into ``fc_in`` / ``fc_out`` and its output is compared with
``F.linear -> F.gelu -> F.linear`` on the same weights (trying ReLU, tanh GELU, no activation,
... first). Tested against wrong and right implementations in tests/test_checks_feed_forward.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..device import get_device
from ._core import Mistake, call, compare, exercise, expect

__all__ = ["check_gelu", "check_FeedForward"]

FORBID_GELU = (
    "torch.nn.functional.gelu",
    "torch.nn.GELU",
    "tantra_lib.gelu",
    "tantra_lib.gelu_tanh",
)
# The gelu exercise comes first: inside FeedForward the learner may use their own gelu,
# tantra_lib.gelu or F.gelu. What FeedForward asks for is the expand-activate-compress shape.
FORBID_FEED_FORWARD = (
    "tantra_lib.FeedForward",
    "tantra_lib.SwiGLU",
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype).to(get_device())


def _tol(dtype) -> float:
    return {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)


# ----------------------------------------------------------------------------- gelu

_GELU_HINT = "GELU(x) = x · Φ(x) = 0.5 · x · (1 + erf(x / √2)), with torch.erf."


def _gelu_mistakes(x):
    r2 = math.sqrt(2.0)
    return [
        (F.gelu(x, approximate="tanh"),
         "this is the tanh approximation of GELU (GPT-2's); the exercise asks for the exact one.",
         "Use the error function: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))."),
        (x * torch.sigmoid(1.702 * x), "this is the sigmoid approximation x·σ(1.702x), not the exact GELU.",
         _GELU_HINT),
        (F.relu(x), "this is ReLU (max(0, x)), not GELU: GELU is smooth and slightly negative for x < 0.",
         _GELU_HINT),
        (F.silu(x), "this is SiLU / Swish, x·σ(x), not GELU.", _GELU_HINT),
        (0.5 * x * (1 + torch.erf(x)), "forgot to divide by √2 inside erf: erf(x) instead of erf(x / √2).",
         "Φ(x) = 0.5 (1 + erf(x / √2)) for a standard normal."),
        (0.5 * x * (1 + torch.erf(x * r2)), "multiplied by √2 inside erf instead of dividing by it.",
         "Φ(x) = 0.5 (1 + erf(x / √2))."),
        (0.5 * x * (1 + torch.erf(x / 2)), "divided by 2 inside erf instead of by √2.",
         "Φ(x) = 0.5 (1 + erf(x / √2))."),
        (x * (1 + torch.erf(x / r2)), "forgot the factor 0.5.", "Φ(x) = 0.5 (1 + erf(x / √2)) lies in [0, 1]."),
        (0.5 * (1 + torch.erf(x / r2)), "returned Φ(x), the normal CDF, without multiplying by x.",
         "GELU(x) = x · Φ(x)."),
        (0.5 * x * torch.erf(x / r2), "forgot the `1 +` before erf.", "Φ(x) = 0.5 (1 + erf(x / √2))."),
    ]


@exercise("gelu", lesson="06_feed_forward", forbids=FORBID_GELU)
def check_gelu(gelu, hidden=False):
    expect(callable(gelu), "`gelu` is not a function.", "Define `def gelu(x):`.")
    dev = get_device()
    cases = [
        (torch.linspace(-5, 5, 101, device=dev), "x = linspace(-5, 5, 101)"),
        (_randn(4, 7, seed=1, scale=3.0), "x of shape (4, 7)"),
        (_randn(2, 3, 5, seed=2), "x of shape (2, 3, 5)"),
    ]
    if hidden:
        cases += [
            (torch.tensor([-1e4, -40.0, -10.0, 0.0, 10.0, 40.0, 1e4], device=dev), "very large |x|"),
            (torch.tensor(0.7, device=dev), "a 0-d tensor"),
            (_randn(6, 9, seed=3, scale=2.0, dtype=torch.float64), "float64 x"),
            (_randn(5, 11, seed=4, scale=2.0, dtype=torch.float16), "float16 x"),
            (_randn(5, 11, seed=5, scale=2.0, dtype=torch.bfloat16), "bfloat16 x"),
            (_randn(8, 4, seed=6, scale=2.0).t(), "a non-contiguous (transposed) x"),
        ]
    for x, label in cases:
        out = call(gelu, x, name="gelu")
        expected = F.gelu(x.double()).to(x.dtype)
        tol = _tol(x.dtype)
        compare(out, expected, what=f"gelu({label})", hint=_GELU_HINT,
                mistakes=_gelu_mistakes(x.double()) if x.dtype == torch.float32 else (), atol=tol, rtol=tol)
    x = _randn(3, 5, seed=7).requires_grad_()
    out = gelu(x)
    expect(isinstance(out, torch.Tensor) and out.requires_grad, "gelu's output does not carry gradients.",
           "Stay in torch operations; do not call .detach(), .numpy() or math.erf on tensors.")


# ----------------------------------------------------------------------------- FeedForward

_FF_HINT = ("forward(x) = fc_out(gelu(fc_in(x))) with fc_in = nn.Linear(d_model, d_ff), "
            "fc_out = nn.Linear(d_ff, d_model).")


def _instantiate(cls, *args, **kwargs):
    """Build the learner's module without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        return cls(*args, **kwargs)


def _linear(module, attr: str, n_in: int, n_out: int, bias: bool):
    """The learner's `module.<attr>` after checking it is a layer of the right shape."""
    layer = getattr(module, attr, None)
    expect(layer is not None, f"your FeedForward has no attribute `{attr}`.",
           f"Create it in __init__: self.{attr} = nn.Linear(...).")
    weight = getattr(layer, "weight", None)
    expect(isinstance(weight, torch.Tensor), f"`{attr}` has no `weight` tensor.", f"Make {attr} an nn.Linear.")
    shape = tuple(weight.shape)
    if shape != (n_out, n_in):
        if shape == (n_in, n_out):
            raise Mistake(f"`{attr}.weight` has shape {shape}, expected {(n_out, n_in)}: the layer maps "
                          f"{n_out} -> {n_in} features, the wrong way round.",
                          f"nn.Linear(in_features, out_features): {attr} must map {n_in} -> {n_out} "
                          f"(its weight is stored as (out, in)).")
        raise Mistake(f"`{attr}.weight` has shape {shape}, expected {(n_out, n_in)} "
                      f"({attr} maps {n_in} -> {n_out} features).",
                      "fc_in expands d_model -> d_ff, fc_out compresses d_ff -> d_model.")
    b = getattr(layer, "bias", None)
    if bias:
        expect(isinstance(b, torch.Tensor) and tuple(b.shape) == (n_out,),
               f"`{attr}` should have a bias of shape ({n_out},) (bias=True).",
               f"nn.Linear({n_in}, {n_out}, bias=bias).")
    else:
        expect(b is None, f"`{attr}` has a bias although FeedForward(..., bias=False) was asked.",
               "Pass bias=bias on to both nn.Linear layers.")
    return layer


def _ff_case(FeedForward, d_model, d_ff, bias, x, seed, label):
    dtype = x.dtype
    kwargs = {} if bias else {"bias": False}
    ff = _instantiate(FeedForward, d_model, d_ff, **kwargs)
    expect(isinstance(ff, nn.Module), "FeedForward(...) is not an nn.Module.", "class FeedForward(nn.Module): ...")
    fc_in = _linear(ff, "fc_in", d_model, d_ff, bias)
    fc_out = _linear(ff, "fc_out", d_ff, d_model, bias)
    names = dict(ff.named_parameters())
    expect("fc_in.weight" in names and "fc_out.weight" in names,
           "fc_in / fc_out are not registered as submodules (their weights are missing from parameters()).",
           "Assign them as attributes of self after super().__init__() (not in a plain list or dict).")
    n_expected = 2 * d_model * d_ff + ((d_ff + d_model) if bias else 0)
    n_params = sum(p.numel() for p in ff.parameters())
    extra = sorted(n for n in names if not n.startswith(("fc_in.", "fc_out.")))
    expect(n_params == n_expected,
           f"FeedForward({d_model}, {d_ff}{'' if bias else ', bias=False'}) has {n_params} parameters, "
           f"expected {n_expected} (two Linear layers only); parameters besides fc_in/fc_out: {extra}.",
           "A FeedForward is fc_in and fc_out and nothing else with weights.")
    # 1) load seeded weights (scaled like nn.Linear's init, so the GELU sees both signs)
    w1 = _randn(d_ff, d_model, seed=seed, scale=d_model ** -0.5, dtype=torch.float64)
    w2 = _randn(d_model, d_ff, seed=seed + 1, scale=d_ff ** -0.5, dtype=torch.float64)
    b1 = _randn(d_ff, seed=seed + 2, scale=0.3, dtype=torch.float64) if bias else None
    b2 = _randn(d_model, seed=seed + 3, scale=0.3, dtype=torch.float64) if bias else None
    ff = ff.to(device=x.device, dtype=dtype).eval()
    with torch.no_grad():
        for layer, w, b in ((fc_in, w1, b1), (fc_out, w2, b2)):
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
    # 2) compare with fc_out(gelu(fc_in(x))) in float64, trying the usual mistakes first
    out = call(ff, x, name="FeedForward.forward")
    xd = x.double()
    h = F.linear(xd, w1, b1)
    expected = F.linear(F.gelu(h), w2, b2).to(dtype)
    mistakes = []
    if dtype == torch.float32:
        mistakes = [
            (F.linear(F.relu(h), w2, b2), "used ReLU between the layers; the exercise asks for GELU.",
             "Apply gelu (the exact one) to fc_in(x)."),
            (F.linear(F.gelu(h, approximate="tanh"), w2, b2),
             "used the tanh approximation of GELU; the exercise asks for the exact one.",
             "Use your exact gelu (erf) or tantra_lib.gelu."),
            (F.linear(h, w2, b2), "no activation between the layers: two Linear layers in a row are just one "
             "linear map.", "Apply gelu to fc_in(x) before fc_out."),
            (F.gelu(F.linear(F.gelu(h), w2, b2)), "applied GELU after fc_out too; the output must stay linear.",
             "Only the hidden (d_ff) features go through the activation."),
            (F.linear(F.silu(h), w2, b2), "used SiLU between the layers; the exercise asks for GELU.", _FF_HINT),
        ]
        if bias:
            mistakes += [
                (F.linear(F.gelu(F.linear(xd, w1)), w2, b2), "fc_in's bias is not added.",
                 "Use the layer itself (self.fc_in(x)) or add fc_in.bias."),
                (F.linear(F.gelu(h), w2), "fc_out's bias is not added.",
                 "Use the layer itself (self.fc_out(h)) or add fc_out.bias."),
            ]
    tol = _tol(dtype) if dtype != torch.float32 else 1e-4
    compare(out, expected, what=f"FeedForward({d_model}, {d_ff}{'' if bias else ', bias=False'}) on {label}",
            hint=_FF_HINT, mistakes=mistakes, atol=tol, rtol=tol)
    return ff


@exercise("FeedForward", lesson="06_feed_forward", forbids=FORBID_FEED_FORWARD)
def check_FeedForward(FeedForward, hidden=False):
    expect(isinstance(FeedForward, type) and issubclass(FeedForward, nn.Module),
           "`FeedForward` is not an nn.Module class.", "Define `class FeedForward(nn.Module):`.")
    cases = [  # (d_model, d_ff, bias, x, weight seed, label)
        (8, 32, True, _randn(2, 5, 8, seed=11, scale=2.0), 12, "x of shape (2, 5, 8)"),
        (6, 10, True, _randn(7, 6, seed=13, scale=2.0), 14, "x of shape (7, 6)"),
    ]
    if hidden:
        cases += [
            (12, 20, False, _randn(2, 3, 4, 12, seed=15, scale=2.0), 16, "a 4-d x of shape (2, 3, 4, 12)"),
            (8, 16, True, _randn(2, 4, 8, seed=17, scale=2.0, dtype=torch.float64), 18, "float64 x"),
            (8, 16, True, _randn(2, 4, 8, seed=19, dtype=torch.bfloat16), 20, "bfloat16 x"),
            (8, 16, True, _randn(8, 5, 2, seed=21, scale=2.0).transpose(0, 2), 22,
             "a non-contiguous x of shape (2, 5, 8)"),
            (4, 16, True, _randn(3, 4, seed=23, scale=50.0), 24, "x with large values (std 50)"),
        ]
    for d_model, d_ff, bias, x, seed, label in cases:
        ff = _ff_case(FeedForward, d_model, d_ff, bias, x, seed, label)
    # gradients reach both layers (a .detach() or a NumPy detour would stop training)
    ff = _ff_case(FeedForward, 8, 32, True, _randn(2, 3, 8, seed=31), 32, "x of shape (2, 3, 8)")
    ff.zero_grad(set_to_none=True)
    ff(_randn(2, 3, 8, seed=33)).sum().backward()
    for attr in ("fc_in", "fc_out"):
        grad = getattr(ff, attr).weight.grad
        expect(grad is not None and bool(grad.abs().sum() > 0), f"no gradient reaches {attr}.weight.",
               "Use the layers in forward with torch operations only (no .detach(), no torch.no_grad()).")
