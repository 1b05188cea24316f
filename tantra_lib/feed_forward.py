"""The position-wise feed-forward network: expand, activate, compress.

Each token's vector goes through Linear(d_model, d_ff) -> GELU -> Linear(d_ff, d_model),
independently of the other tokens; with d_ff = 4 d_model it holds about two thirds of a
block's parameters. GELU(x) = x Φ(x) (Hendrycks & Gimpel 2016), exactly with erf or
approximately with tanh (the GPT-2 form). SwiGLU (Shazeer 2020) gates the expansion instead.

Taught in lessons/06_feed_forward. Checked against F.gelu in tests/test_lib_feed_forward.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .shortcut_guard import reference

__all__ = ["gelu", "gelu_tanh", "FeedForward", "SwiGLU"]


@reference("gelu")
def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU: x * Φ(x) = 0.5 x (1 + erf(x / sqrt 2)). Any shape -> same shape."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


@reference("gelu_tanh")
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh approximation: 0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x^3))). Any shape."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


@reference("FeedForward")
class FeedForward(nn.Module):
    """fc_out(GELU(fc_in(x))): (..., d_model) -> (..., d_model), hidden size d_ff."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gelu() above is the formula; F.gelu is the same exact (erf) GELU as one fused op.
        h = F.gelu(self.fc_in(x))  # (..., d_ff)
        if self.training and self.dropout.p > 0:  # identity otherwise: skip the call
            h = self.dropout(h)
        return self.fc_out(h)


@reference("SwiGLU")
class SwiGLU(nn.Module):
    """w_down(SiLU(w_gate x) * w_up x): (..., d_model) -> (..., d_model), hidden size d_ff."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False):
        super().__init__()
        self.w_gate = nn.Linear(d_model, d_ff, bias=bias)
        self.w_up = nn.Linear(d_model, d_ff, bias=bias)
        self.w_down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))
