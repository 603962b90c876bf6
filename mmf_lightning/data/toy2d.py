"""Low-dimensional distributions for fast, exactly judged experiments.

Each sampler maps (n, torch.Generator) -> (n, 2) (the Gaussian: (n, len(mean))).
"""

import math
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


def checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """Uniform on the dark squares of a 4x4 board on [-2, 2]^2."""
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1)


def moons(n: int, g: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved half circles, centred and scaled to about [-2, 2]."""
    s = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(s), 1 - torch.cos(s))
    y = torch.where(upper, torch.sin(s), 0.5 - torch.sin(s))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6
    return pts + noise * torch.randn(n, 2, generator=g)


def eight_gaussians(n: int, g: torch.Generator, radius: float = 2.0, std: float = 0.1) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g).float()
    centres = radius * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1)
    return centres + std * torch.randn(n, 2, generator=g)


def circles(n: int, g: torch.Generator, noise: float = 0.03) -> torch.Tensor:
    """Two concentric circles of radius 2 and 1."""
    a = torch.rand(n, generator=g) * 2 * math.pi
    r = torch.where(torch.rand(n, generator=g) < 0.5, 2.0, 1.0)
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], dim=1) + noise * torch.randn(n, 2, generator=g)


def spirals(n: int, g: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved spirals on about [-2, 2]^2."""
    s = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=1) / (1.5 * math.pi)
    return pts + noise * torch.randn(n, 2, generator=g)


DISTRIBUTIONS = {
    "checkerboard": checkerboard,
    "moons": moons,
    "eight_gaussians": eight_gaussians,
    "circles": circles,
    "spirals": spirals,
}


def sample_distribution(
    name: str, n: int, g: torch.Generator, mean: Sequence[float] = (0.0, 0.0), std: Sequence[float] = (1.0, 1.0)
) -> torch.Tensor:
    """n samples of a named distribution; "gaussian" is N(mean, diag(std^2))."""
    if name == "gaussian":
        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        if m.shape != s.shape or (s <= 0).any():
            raise ValueError(f"gaussian needs mean and std of one length and std > 0, got {mean}, {std}")
        return m + s * torch.randn(n, m.numel(), generator=g)
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose one of {sorted([*DISTRIBUTIONS, 'gaussian'])}")
    return DISTRIBUTIONS[name](n, g)


class _DictDataset(Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i]}


class ToyDataModule(L.LightningDataModule):
    """A fixed, seeded sample of a low-dimensional distribution (no download).

    Args:
        distribution: checkerboard | moons | eight_gaussians | circles | spirals | gaussian.
        num_train, num_val: dataset sizes.
        batch_size: per-device batch size.
        mean, std: parameters of "gaussian".
        seed: the data are the same on every rank and every run with this seed.
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
    ):
        super().__init__()
        if num_train < 1 or num_val < 0 or batch_size < 1:
            raise ValueError(
                f"need num_train >= 1, num_val >= 0, batch_size >= 1, got {num_train}, {num_val}, {batch_size}"
            )
        self.save_hyperparameters()
        self._sample(1)  # fail now on an unknown name or bad parameters

    def _sample(self, n: int, offset: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.hparams.seed + offset)
        hp = self.hparams
        return sample_distribution(hp.distribution, n, g, hp.mean, hp.std)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (2,) if self.hparams.distribution != "gaussian" else (len(self.hparams.mean),)

    def reference_samples(self, n: int) -> torch.Tensor:
        """n fresh samples (not the training set), for plots and distances."""
        return self._sample(n, offset=1_000_003)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = _DictDataset(self._sample(self.hparams.num_train))
        self.val_set = _DictDataset(self._sample(self.hparams.num_val, offset=1))

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
