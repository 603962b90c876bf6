"""A DiT / SiT-style transformer for the average velocity u(z, r, t[, y]) (Peebles & Xie 2023), the backbone
MeanFlow, iMF and AlphaFlow train in an autoencoder's latent space.

Patchify, a fixed 2-D sin-cos position embedding, transformer blocks conditioned by adaLN-Zero on the
(t, t - r) embedding (plus the class embedding), a zero-initialised adaLN output layer, unpatchify.

Attention is softmax(q k^T / sqrt(d)) v in plain ops (``attention.jvp_safe_attention``), not a fused
kernel: ``torch.func.jvp`` runs through it, and with lambda > 0 the gradient flows through the attention's
share of du/dt too. Fused attention kernels with a forward-mode rule drop that gradient (their tangent is
not differentiable), so under MMF's SG_lambda, attention's part of the lambda-gradient would silently be 0.
Layer norms are ``jvp_layers.LayerNorm`` (plain ops) for the same reason: torch's fused layer norm gets the
gradient through its tangent wrong.
"""

from typing import Literal

import torch
from torch import nn

from mmf_lightning.nets.attention import attention_function
from mmf_lightning.nets.embeddings import TimePairEmbedding, class_embedding
from mmf_lightning.nets.jvp_layers import LayerNorm
from mmf_lightning.nets.shapes import check_input
from mmf_lightning.utils.config import RecordsInit


def sincos_position_embedding(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding of a grid x grid patch layout: (grid * grid, width), rows in raster order."""
    if width % 4:
        raise ValueError(f"DiT width must be divisible by 4 (2-D sin-cos position embedding), got {width}")
    quarter = width // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    axis = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    parts = [f(pos.reshape(-1, 1) * freqs) for pos in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x (B, L, W)`` shifted and scaled per sample by ``shift, scale (B, W)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, L, W), JVP-safe (module docstring)."""

    def __init__(self, width: int, heads: int, backend: str = "plain"):
        super().__init__()
        if width % heads:
            raise ValueError(f"DiT width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.attend = attention_function(backend)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(self.attend(q, k, v).transpose(1, 2).reshape(b, n, w))


class DiTBlock(nn.Module):
    """Pre-norm attention and MLP, each shifted, scaled and gated by the conditioning (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, attention: str = "plain"):
        super().__init__()
        self.norm1 = LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, attention)
        self.norm2 = LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)  # the "Zero" of adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(RecordsInit, nn.Module):
    """``forward(z: (B, C, H, W), r: (B,), t: (B,), y: (B,) long | None) -> (B, C, H, W)``.

    Args:
        in_channels, image_size: the data's shape (C, H, W = image_size); latents of an autoencoder or pixels.
        patch_size: side of the square patches; image_size must be divisible by it.
        width, depth, heads, mlp_ratio: the transformer (DiT-S/2: 384, 12, 6, 4; DiT-B/2: 768, 12, 12, 4).
        num_classes: class-conditional with a null label ``num_classes`` (for guidance), or None.
        guidance_input: the guidance scale is an input too (``embeddings.GuidedLabels``; improved MeanFlow).
        time_dim: frequencies of the (t, t - r) sinusoidal features; ``time_scale``: see
            ``embeddings.SinusoidalEmbedding``.
        attention: "plain" (exact in plain ops, the default) or "jvp_flash" (the optional Triton kernel,
            ``attention.attention_function``; CUDA, the ``flash`` extra, not yet checked on a GPU).
    """

    def __init__(
        self,
        in_channels: int = 4,
        image_size: int = 32,
        patch_size: int = 2,
        width: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        time_dim: int = 256,
        time_scale: float = 10.0,
        guidance_input: bool = False,
        attention: Literal["plain", "jvp_flash"] = "plain",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"DiT image_size={image_size} is not divisible by patch_size={patch_size}")
        if depth < 1:
            raise ValueError(f"DiT depth must be >= 1, got {depth}")
        self.data_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        self.patch_size, self.grid = patch_size, image_size // patch_size
        self.patchify = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_position_embedding(width, self.grid), persistent=False)
        self.time_embed = TimePairEmbedding(time_dim, width, time_scale)
        self.class_embed = class_embedding(num_classes, width, guidance_input)
        self.guidance_input = guidance_input
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, attention) for _ in range(depth))
        self.final_norm = LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, patch_size * patch_size * in_channels)
        for layer in (self.final_ada[1], self.out):  # the net starts at u = 0, as DiT's does
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(width, -1))

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        check_input(self, z, r, t, y)
        c = self.time_embed(r, t)
        if self.class_embed is not None:
            c = c + self.class_embed(y)
        x = self.patchify(z).flatten(2).transpose(1, 2) + self.pos  # (B, L, W)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        return self.unpatchify(self.out(modulate(self.final_norm(x), shift, scale)))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p * p * C) tokens -> (B, C, H, W)."""
        b, p, g, c = x.shape[0], self.patch_size, self.grid, self.data_shape[0]
        x = x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)
