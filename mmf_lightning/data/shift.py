"""Evaluation sets for distribution shift (paper section 5.4): SVHN and STL-10 resized to 32, and
CIFAR-10-C-style corruptions of CIFAR-10's test split computed on the fly.

Corruptions follow Hendrycks & Dietterich (2019), CIFAR-10-C, on pixels in [0, 1]:
Gaussian noise of std c = (0.04, 0.06, 0.08, 0.09, 0.10) and Gaussian blur of sigma
c = (0.4, 0.6, 0.7, 0.8, 1.0) for severities 1 to 5. The noise of image i is drawn from a
generator seeded by (seed, i): every epoch, rank and run sees the same corrupted set.
"""

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmf_lightning.data.images import ImageDataModule, LabelledImages, cifar10_split, image_transform, missing

NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
KINDS = ("svhn", "stl10", "cifar10_gaussian_noise", "cifar10_gaussian_blur")


def corrupt(image: torch.Tensor, kind: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A float image (C, H, W) in [0, 1] -> its corruption, in [0, 1]."""
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1 to 5, got {severity}")
    if kind == "gaussian_noise":
        noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
        return (image + NOISE_STD[severity - 1] * noise).clamp(0, 1)
    if kind == "gaussian_blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = BLUR_SIGMA[severity - 1]
        return gaussian_blur(image, 2 * math.ceil(3 * sigma) + 1, sigma).clamp(0, 1)
    raise ValueError(f"unknown corruption {kind!r}: gaussian_noise or gaussian_blur")


class Corrupted(Dataset):
    """(PIL image, label) -> (uint8 tensor of the corrupted image, label)."""

    def __init__(self, base: Dataset, kind: str, severity: int, seed: int = 0):
        self.base, self.kind, self.severity, self.seed = base, kind, severity, seed
        corrupt(torch.zeros(3, 4, 4), kind, severity)  # fail now on a bad kind or severity

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        from torchvision.transforms.functional import pil_to_tensor

        image, label = self.base[i]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        x = corrupt(pil_to_tensor(image).float() / 255, self.kind, self.severity, g)
        return (x * 255).round().to(torch.uint8), label


class ShiftDataModule(ImageDataModule):
    """An evaluation-only DataModule (``validate`` / ``test`` / ``evaluate``): a shifted test set
    at 32x32, batches {"x", "y"} like CIFAR-10's.

    Args:
        kind: "svhn" | "stl10" | "cifar10_gaussian_noise" | "cifar10_gaussian_blur".
        severity: 1 to 5, for the CIFAR-10 corruptions.
        root: for svhn ``root/test_32x32.mat``; stl10 ``root/stl10_binary/``; CIFAR-10
            ``root/cifar-10-batches-py/``.
        download: let torchvision fetch SVHN / STL-10 (CIFAR-10: see CIFAR10DataModule).
    """

    data_shape = (3, 32, 32)
    num_classes = 10

    def __init__(
        self,
        kind: str = "svhn",
        severity: int = 3,
        root: str = "data/shift",
        download: bool = False,
        seed: int = 0,
        **kwargs,
    ):
        kwargs.setdefault("random_flip", False)
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not 1 <= severity <= 5:
            raise ValueError(f"severity must be 1 to 5, got {severity}")
        self.kind, self.severity, self.root, self.download, self.seed = kind, severity, Path(root), download, seed

    def _test_split(self) -> Dataset:
        if self.kind.startswith("cifar10_"):
            return Corrupted(
                cifar10_split(self.root, train=False), self.kind[len("cifar10_") :], self.severity, self.seed
            )
        from torchvision.datasets import STL10, SVHN

        cls, expected = (
            (SVHN, self.root / "test_32x32.mat") if self.kind == "svhn" else (STL10, self.root / "stl10_binary")
        )
        if not expected.exists() and not self.download:
            raise missing(
                self.kind.upper(),
                expected,
                "Stage it there, or set data.init_args.download=true on a machine with internet",
            )
        try:
            return cls(str(self.root), split="test", download=self.download)
        except (RuntimeError, OSError) as err:
            raise RuntimeError(f"{self.kind} under {self.root} is missing or corrupt ({err})") from err

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit":
            raise ValueError(f"ShiftDataModule({self.kind!r}) is for evaluation (validate / test), not fit")
        transform = image_transform(False, False, image_size=32)
        self.val_set = self.test_set = LabelledImages(self._test_split(), transform)
