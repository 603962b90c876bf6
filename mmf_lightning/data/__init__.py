"""LightningDataModules. Every batch is a dict: "x" (data), optional "y" (labels) and "e"
(a source sample paired with x)."""

from mmf_lightning.data.images import CIFAR10DataModule
from mmf_lightning.data.toy2d import ToyDataModule, sample_distribution

__all__ = ["CIFAR10DataModule", "ToyDataModule", "sample_distribution"]
