"""A UNet for the average velocity u(z, r, t[, y]) in the style of DDPM / MeanFlow's CIFAR net.

Residual blocks with GroupNorm and SiLU, the (t, t - r) embedding added in every block,
self-attention at chosen resolutions (JVP-safe), nearest-neighbour upsampling.
"""

from collections.abc import Sequence

import torch
from torch import nn

from mmf_lightning.nets.attention import SpatialSelfAttention
from mmf_lightning.nets.embeddings import TimePairEmbedding, class_embedding
from mmf_lightning.nets.jvp_layers import Conv2d, GroupNorm, SiLU
from mmf_lightning.nets.shapes import check_input
from mmf_lightning.utils.config import RecordsInit


def _norm(channels: int, groups: int) -> GroupNorm:
    return GroupNorm(min(groups, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.act = SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.skip(x) + h


class UNet(RecordsInit, nn.Module):
    """Average-velocity UNet.

    ``forward(z: (B, C, H, W), r: (B,), t: (B,), y: (B,) long | None) -> (B, C, H, W)``.

    Args:
        in_channels: image channels C.
        image_size: H == W; checked on every call so a mismatched dataset fails at once.
        channels: base width; level i has ``channels * channel_mult[i]`` channels.
        channel_mult: width multipliers, one per resolution level (each level halves H).
        num_res_blocks: residual blocks per level.
        attention_resolutions: feature-map sizes (e.g. 16) that get self-attention.
        dropout: dropout inside residual blocks.
        num_classes: enables class conditioning (label ``num_classes`` is the null label).
        guidance_input: the guidance scale is an input too (``embeddings.GuidedLabels``; improved MeanFlow).
        num_heads: attention heads.
        groups: GroupNorm groups.
        time_scale: t and t - r are multiplied by this before the sinusoidal features (see
            ``embeddings.SinusoidalEmbedding``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        channels: int = 128,
        channel_mult: Sequence[int] = (2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_classes: int | None = None,
        num_heads: int = 1,
        groups: int = 32,
        time_scale: float = 10.0,
        guidance_input: bool = False,
    ):
        super().__init__()
        levels = len(channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"UNet image_size={image_size} is not divisible by 2**(len(channel_mult) - 1) = {2 ** (levels - 1)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet dropout must be in [0, 1), got {dropout}")
        self.data_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        emb_dim = 4 * channels
        self.time_embed = TimePairEmbedding(channels, emb_dim, time_scale)
        self.class_embed = class_embedding(num_classes, emb_dim, guidance_input)
        self.guidance_input = guidance_input

        self.stem = Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch = [channels]
        ch, res = channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(ch, channels * mult, emb_dim, dropout, groups)]
                ch = channels * mult
                if res in attention_resolutions:
                    blocks.append(SpatialSelfAttention(ch, num_heads, groups))
                self.down.append(nn.ModuleList(blocks))
                skip_ch.append(ch)
            if level < levels - 1:
                self.down.append(nn.ModuleList([Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skip_ch.append(ch)
                res //= 2

        self.middle = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, dropout, groups),
                SpatialSelfAttention(ch, num_heads, groups),
                ResBlock(ch, ch, emb_dim, dropout, groups),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                blocks = [ResBlock(ch + skip_ch.pop(), channels * mult, emb_dim, dropout, groups)]
                ch = channels * mult
                if res in attention_resolutions:
                    blocks.append(SpatialSelfAttention(ch, num_heads, groups))
                if level > 0 and i == num_res_blocks:
                    blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    blocks.append(Conv2d(ch, ch, 3, padding=1))
                    res *= 2
                self.up.append(nn.ModuleList(blocks))

        self.head = nn.Sequential(_norm(ch, groups), SiLU(), Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        check_input(self, z, r, t, y)
        emb = self.time_embed(r, t)
        if self.class_embed is not None:
            emb = emb + self.class_embed(y)
        h = self.stem(z)
        skips = [h]
        for blocks in self.down:
            h = _apply(blocks, h, emb)
            skips.append(h)
        h = _apply(self.middle, h, emb)
        for blocks in self.up:
            h = _apply(blocks, torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)


def _apply(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        h = block(h, emb) if isinstance(block, ResBlock) else block(h)
    return h
