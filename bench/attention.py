"""Reference attention vs PyTorch's, forward pass on the CPU (issue 3's benchmark).

Sizes: batch 4, 8 heads, head dim d_head = 64 (issue 3's "d = 64" read as the head dim, so
d_model = 8 x 64 = 512 for the multi-head rows), t = 128, 512, 2048. Two comparisons a row:

* math (the target, ratio <= 1.2): the reference computation, softmax(q k^T / sqrt(d)) v with
  the (t, t) weights materialised, against PyTorch doing the same -
  ``sdpa``: tantra_lib.scaled_dot_product_attention vs F.scaled_dot_product_attention forced
  to its MATH backend (``sdpa_kernel(SDPBackend.MATH)``);
  ``mha``: tantra_lib.MultiHeadAttention with ``return_weights=True`` (its reference path) vs
  nn.MultiheadAttention's Python path (``F.multi_head_attention_forward``, fast path off,
  ``need_weights=True``), same weights.
* default (for information): what each library runs by default for inference -
  ``sdpa``: the same reference function (it has one path) vs F.scaled_dot_product_attention's
  default (fused) backend; ``mha``: tantra_lib.MultiHeadAttention without weights (it hands the
  attention itself to F.scaled_dot_product_attention then) vs nn.MultiheadAttention's C++ fast
  path with ``need_weights=False``.

Every timing is the median of several repeats after a warm-up, under ``torch.inference_mode``,
with the contenders interleaved call by call so that a load change on a shared machine hits
all of them alike. Ratios > 1 mean tantra_lib is slower.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import tantra_lib

BATCH, N_HEADS, D_HEAD = 4, 8, 64
D_MODEL = N_HEADS * D_HEAD
SIZES = (128, 512, 2048)
QUICK_SIZES = (16, 64)
TARGET = 1.2


def _time_interleaved(fns: dict[str, Callable[[], object]], quick: bool) -> dict[str, float]:
    """Median seconds per call of each fn; calls alternate between the fns."""
    for fn in fns.values():  # warm-up (allocator, thread pool, lazy init)
        fn()
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
    budget = 0.05 if quick else 2.0  # seconds of measuring per contender
    repeats = max(3, min(25, int(budget / max(max(first.values()), 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def _sdpa_row(t: int, quick: bool) -> str:
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(BATCH, N_HEADS, t, D_HEAD, generator=g) for _ in range(3))

    def torch_math():
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)

    times = _time_interleaved(
        {
            "ours": lambda: tantra_lib.scaled_dot_product_attention(q, k, v),
            "math": torch_math,
            "default": lambda: F.scaled_dot_product_attention(q, k, v),
        },
        quick,
    )
    return _format("sdpa", t, times["ours"], times["math"], times["ours"], times["default"])


def _mha_row(t: int, quick: bool) -> str:
    torch.manual_seed(0)
    ours = tantra_lib.MultiHeadAttention(D_MODEL, N_HEADS).eval()
    theirs = nn.MultiheadAttention(D_MODEL, N_HEADS, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv_proj.weight)  # rows [q; k; v] in both
        theirs.in_proj_bias.copy_(ours.qkv_proj.bias)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(BATCH, t, D_MODEL, generator=torch.Generator().manual_seed(t))

    def torch_math():
        was = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return theirs(x, x, x, need_weights=True, average_attn_weights=False)
        finally:
            torch.backends.mha.set_fastpath_enabled(was)

    times = _time_interleaved(
        {
            "ours_math": lambda: ours(x, return_weights=True),
            "math": torch_math,
            "ours_default": lambda: ours(x),
            "default": lambda: theirs(x, x, x, need_weights=False),
        },
        quick,
    )
    return _format("mha", t, times["ours_math"], times["math"], times["ours_default"], times["default"])


def _format(kind: str, t: int, ours_math: float, math: float, ours_default: float, default: float) -> str:
    ratio = ours_math / math
    flag = "ok" if ratio <= TARGET else f">{TARGET}x"
    return (
        f"  {kind:<5}{t:>6}  {ours_math * 1e3:>10.2f}  {math * 1e3:>10.2f}  {ratio:>6.2f}  {flag:<6}"
        f"{ours_default * 1e3:>10.2f}  {default * 1e3:>10.2f}  {ours_default / default:>6.2f}"
    )


def run(quick: bool) -> list[str]:
    """The table: one row per (sdpa | mha, t). `quick` uses tiny t and few repeats (a smoke run)."""
    sizes = QUICK_SIZES if quick else SIZES
    lines = [
        f"  CPU, {torch.get_num_threads()} threads, float32, forward only. batch {BATCH}, {N_HEADS} heads, "
        f"d_head {D_HEAD} (issue's d = 64 read as the head dim; d_model {D_MODEL}). Median ms per call.",
        "  math: weights materialised on both sides (sdpa: torch's SDPBackend.MATH; mha: tantra return_weights=True",
        "  vs nn.MultiheadAttention's Python path, need_weights=True). default: each library's default inference",
        f"  route (fused kernels where torch has them). Target: math ratio <= {TARGET}. Ratio = tantra / torch.",
        f"  {'':<5}{'t':>6}  {'tantra':>10}  {'torch':>10}  {'ratio':>6}  {'':<6}{'tantra':>10}  {'torch':>10}  "
        f"{'ratio':>6}",
        f"  {'':<11}  {'---- math':<38}---- default",
    ]
    with torch.inference_mode():
        for t in sizes:
            lines.append(_sdpa_row(t, quick))
        for t in sizes:
            lines.append(_mha_row(t, quick))
    return lines
