"""Low-dimensional distributions as a DataModule, for fast, exactly judged experiments."""

from collections.abc import Sequence

import torch

from mmf_lightning.data.base import DataModuleBase, DictDataset
from mmf_lightning.sources.distributions import DISTRIBUTIONS, LABELLED, sample_distribution
from mmf_lightning.utils.config import check_count

__all__ = ["DISTRIBUTIONS", "ToyDataModule", "sample_distribution"]


class ToyDataModule(DataModuleBase):
    """A fixed, seeded sample of a low-dimensional distribution (no download). Batches: {"x": (B, D)}, and with
    ``labels`` also {"y": (B,) long}.

    The source (N(0, I) by default) is the model's ``source``; to map moons to a checkerboard,
    set ``model.source`` to ``mmf_lightning.sources.Named`` with ``name: moons``.

    Args:
        distribution: checkerboard | moons | eight_gaussians | circles | spirals | gaussian.
        num_train, num_val: dataset sizes.
        mean, std: parameters of "gaussian" (their length is the dimension).
        seed: the data are the same on every rank and every run with this seed.
        labels: give each sample its class (for class-conditional nets and guidance): the half circle of
            "moons" (2 classes), the component of "eight_gaussians" (8). The points are the same as without.
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
        labels: bool = False,
    ):
        super().__init__(batch_size, num_workers, persistent_workers, pin_memory)
        num_train, num_val = check_count("num_train", num_train, 1), check_count("num_val", num_val)
        self.distribution, self.mean, self.std = distribution, tuple(mean), tuple(std)
        self.num_train, self.num_val, self.seed = num_train, num_val, check_count("seed", seed)
        if labels and distribution not in LABELLED:
            raise ValueError(f"labels: {distribution!r} has no class labels; choose one of {sorted(LABELLED)}")
        self.labels = labels
        self.num_classes = LABELLED[distribution][1] if labels else None
        self.data_shape = tuple(self._sample(1)["x"].shape[1:])  # fails now on an unknown name or bad parameters

    def _sample(self, n: int, offset: int = 0) -> dict[str, torch.Tensor]:
        """{"x": (n, D)} and, with ``labels``, {"y": (n,)}."""
        g = torch.Generator().manual_seed(self.seed + offset)
        if self.labels:
            x, y = LABELLED[self.distribution][0](n, g)
            return {"x": x, "y": y}
        return {"x": sample_distribution(self.distribution, n, g, self.mean, self.std)}

    def reference_samples(self, n: int) -> torch.Tensor:
        """n fresh samples (not the training set), for plots and distances."""
        return self._sample(n, offset=1_000_003)["x"]

    def setup(self, stage: str | None = None) -> None:
        self.train_set = DictDataset(**self._sample(self.num_train))
        self.val_set = DictDataset(**self._sample(self.num_val, offset=1))
