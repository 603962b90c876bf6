"""LightningDataModules. Every batch is a dict: "x" (data), and optionally "y" (labels), "e"
(a source sample paired with x), "path" / "path_velocity" (a trajectory from x to e)."""

from mmf_lightning.data.distributions import sample_distribution
from mmf_lightning.data.images import CIFAR10DataModule
from mmf_lightning.data.toy2d import ToyDataModule

__all__ = ["CIFAR10DataModule", "ToyDataModule", "sample_distribution"]
