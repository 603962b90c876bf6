"""Low-dimensional distributions as a DataModule, for fast, exactly judged experiments."""

from collections.abc import Sequence

import torch

from mmf_lightning.config import check_count
from mmf_lightning.data.base import DataModuleBase, DictDataset
from mmf_lightning.distributions import DISTRIBUTIONS, sample_distribution

__all__ = ["DISTRIBUTIONS", "ToyDataModule", "sample_distribution"]


class ToyDataModule(DataModuleBase):
    """A fixed, seeded sample of a low-dimensional distribution (no download). Batches: {"x": (B, D)}.

    The source (N(0, I) by default) is the model's ``source``; to map moons to a checkerboard,
    set ``model.source`` to ``mmf_lightning.sources.Named`` with ``name: moons``.

    Args:
        distribution: checkerboard | moons | eight_gaussians | circles | spirals | gaussian.
        num_train, num_val: dataset sizes.
        mean, std: parameters of "gaussian" (their length is the dimension).
        seed: the data are the same on every rank and every run with this seed.
        batch_size, num_workers, persistent_workers, pin_memory: see ``DataModuleBase``.
    """

    def __init__(
        self,
        distribution: str = "checkerboard",
        num_train: int = 50_000,
        num_val: int = 5_000,
        batch_size: int = 256,
        mean: Sequence[float] = (0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0),
        seed: int = 0,
        num_workers: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
    ):
        super().__init__(batch_size, num_workers, persistent_workers, pin_memory)
        num_train, num_val = check_count("num_train", num_train, 1), check_count("num_val", num_val)
        self.distribution, self.mean, self.std = distribution, tuple(mean), tuple(std)
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
        self.data_shape = tuple(self._sample(1).shape[1:])  # fails now on an unknown name or bad parameters

    def _sample(self, n: int, offset: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + offset)
        return sample_distribution(self.distribution, n, g, self.mean, self.std)

    def reference_samples(self, n: int) -> torch.Tensor:
        """n fresh samples (not the training set), for plots and distances."""
        return self._sample(n, offset=1_000_003)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = DictDataset(x=self._sample(self.num_train))
        self.val_set = DictDataset(x=self._sample(self.num_val, offset=1))
