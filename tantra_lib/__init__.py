"""tantra_lib — the reference library of Transformer Tantra.

One concept a file, imported here in the order the course teaches them: each piece is built
only from the ones above it. Lessons, checks and users import from here:

    from tantra_lib import softmax, MultiHeadAttention, TransformerBlock
"""

from .attention import attention_scores, causal_mask, scaled_dot_product_attention
from .block import TransformerBlock
from .device import get_device, seed_everything
from .feed_forward import FeedForward, SwiGLU, gelu, gelu_tanh
from .gpt import GPT, GPTConfig
from .kv_cache import KVCache
from .multi_head import MultiHeadAttention, merge_heads, split_heads
from .norm import LayerNorm, RMSNorm, layer_norm, rms_norm
from .positional import (
    LearnedPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    sinusoidal_positional_encoding,
)
from .softmax import log_softmax, masked_softmax, softmax

__version__ = "0.1.0"

__all__ = [
    "get_device",
    "seed_everything",
    "softmax",
    "log_softmax",
    "masked_softmax",
    "attention_scores",
    "causal_mask",
    "scaled_dot_product_attention",
    "KVCache",
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
    "sinusoidal_positional_encoding",
    "LearnedPositionalEmbedding",
    "apply_rope",
    "alibi_bias",
    "alibi_slopes",
    "layer_norm",
    "rms_norm",
    "LayerNorm",
    "RMSNorm",
    "gelu",
    "gelu_tanh",
    "FeedForward",
    "SwiGLU",
    "TransformerBlock",
    "GPTConfig",
    "GPT",
]
