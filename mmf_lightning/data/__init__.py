"""LightningDataModules. Every batch is a dict: "x" (data), and optionally "y" (labels), "e"
(a source sample paired with x), "path" / "path_velocity" (a trajectory from x to e)."""

from mmf_lightning.data.images import (
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    ImageNet64DataModule,
    to_unit_range,
)
from mmf_lightning.data.latents import LatentDataModule
from mmf_lightning.data.shift import ShiftDataModule
from mmf_lightning.data.toy2d import ToyDataModule
from mmf_lightning.data.trajectories import NpzTrajectoryDataModule, ODEDataModule, PointMassDataModule
from mmf_lightning.sources.distributions import sample_distribution

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "ImageNet64DataModule",
    "LatentDataModule",
    "NpzTrajectoryDataModule",
    "ODEDataModule",
    "PointMassDataModule",
    "ShiftDataModule",
    "ToyDataModule",
    "sample_distribution",
    "to_unit_range",
]
