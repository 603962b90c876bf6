"""Self-attention written with matmul + softmax so that ``torch.func.jvp`` works through it.

``F.scaled_dot_product_attention`` (and ``nn.MultiheadAttention``) have no forward-mode AD
on CPU, so the velocity networks must not use them where a JVP runs.
"""

import math

import torch
from torch import nn

from mmf_lightning.nets.jvp_layers import Conv2d, GroupNorm


def jvp_safe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention. ``q, k, v: (B, heads, L, d) -> (B, heads, L, d)``."""
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


ATTENTION_BACKENDS = ("plain", "jvp_flash")


def attention_function(backend: str):
    """``(q, k, v) -> out`` of an attention backend: "plain" (``jvp_safe_attention``: exact, lambda's gradient
    through its tangent included, the L x L weights of every head in memory) or "jvp_flash" (the Triton kernel of
    the ``jvp-flash-attention`` package, the ``flash`` extra: attention's JVP without the L x L matrix, on CUDA;
    off by default until ``benchmarks/gpu_check.py`` shows it equal to "plain", lambda = 1 gradient included)."""
    if backend == "plain":
        return jvp_safe_attention
    if backend != "jvp_flash":
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    try:
        from jvp_flash_attention.jvp_attention import attention
    except ImportError as err:
        raise ImportError(
            f"attention='jvp_flash' needs the jvp-flash-attention package ({err}); install the extra: "
            "pip install -e '.[flash]' (a Triton kernel: CUDA GPUs)"
        ) from err
    return attention


class SpatialSelfAttention(nn.Module):
    """Residual multi-head self-attention over the pixels of a feature map (B, C, H, W)."""

    def __init__(self, channels: int, num_heads: int = 1, groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = GroupNorm(min(groups, channels), channels)
        self.qkv = Conv2d(channels, 3 * channels, 1)
        self.proj = Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-2, -1) for i in range(3))
        out = jvp_safe_attention(q, k, v).transpose(-2, -1).reshape(b, c, h, w)
        return x + self.proj(out)
