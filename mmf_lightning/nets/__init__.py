"""Velocity networks u(z, r, t[, y]) and their building blocks."""

from mmf_lightning.nets.dit import DiT
from mmf_lightning.nets.mlp import MLP
from mmf_lightning.nets.unet import UNet

__all__ = ["DiT", "MLP", "UNet"]
