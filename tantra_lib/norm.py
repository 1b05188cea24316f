"""Layer normalisation and RMS normalisation of each token's feature vector.

LayerNorm (Ba et al. 2016): y = (x - mean) / sqrt(var + eps) * weight + bias, mean and
*biased* variance over the last dim of each token alone (BatchNorm averages over the batch
instead). RMSNorm (Zhang & Sennrich 2019) skips the centring: y = x / sqrt(mean(x^2) + eps) * weight.
eps sits inside the square root.

Taught in lessons/05_layer_norm. Checked against nn.LayerNorm and F.rms_norm in
tests/test_lib_norm.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .shortcut_guard import reference

__all__ = ["layer_norm", "rms_norm", "LayerNorm", "RMSNorm"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@reference("layer_norm")
def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Normalise the last dim to mean 0, variance 1, then scale and shift.

    x: (..., d_model); weight, bias: (d_model,) or None  ->  (..., d_model)
    """
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    mean = xf.mean(dim=-1, keepdim=True)  # (..., 1)
    var = (xf - mean).pow(2).mean(dim=-1, keepdim=True)  # biased: divide by d, not d-1
    y = (xf - mean) * torch.rsqrt(var + eps)  # eps inside the sqrt
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


@reference("rms_norm")
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """Divide the last dim by its root mean square, then scale.

    x: (..., d_model); weight: (d_model,) or None  ->  (..., d_model)
    """
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y.to(x.dtype)


@reference("LayerNorm")
class LayerNorm(nn.Module):
    """LayerNorm over the last dim with parameters ``weight`` (ones) and ``bias`` (zeros),
    named as in nn.LayerNorm so state dicts load across. (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer_norm() above is the formula; the module runs it as PyTorch's fused kernel (one op
        # instead of ~10, a large share of a small GPT's step on a CPU). Tests keep the two equal.
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


@reference("RMSNorm")
class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a ``weight`` (ones). (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
