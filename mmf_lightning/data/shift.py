"""Evaluation sets for distribution shift (paper section 5.4): SVHN and STL-10 resized to 32, and
CIFAR-10-C-style corruptions of CIFAR-10's test split computed on the fly; the same corruptions of
scikit-learn digits' validation split are the offline shifted set of the digits task.

Corruptions follow Hendrycks & Dietterich (2019), CIFAR-10-C, on pixels in [0, 1]:
Gaussian noise of std c = (0.04, 0.06, 0.08, 0.09, 0.10) and Gaussian blur of sigma
c = (0.4, 0.6, 0.7, 0.8, 1.0) for severities 1 to 5. The noise of image i is drawn from a
generator seeded by (seed, i): every epoch, rank and run sees the same corrupted set.

FID against a shifted set (``evaluate CKPT --data <a ShiftDataModule config>``): the shifted set is
the reference, whatever the FID's ``reference_split`` ("train" and "val" both name it).
"""

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmf_lightning.data.images import (
    DigitsDataModule,
    ImageDataModule,
    LabelledImages,
    cifar10_split,
    image_transform,
    missing,
)

NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
CORRUPTIONS = ("gaussian_noise", "gaussian_blur")
KINDS = ("svhn", "stl10", *(f"{base}_{c}" for base in ("cifar10", "digits") for c in CORRUPTIONS))


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
    """(PIL image or uint8 (C, H, W) tensor, label) -> (uint8 tensor of the corrupted image, label);
    image i's noise comes from a generator seeded by (seed, i)."""

    def __init__(self, base: Dataset, kind: str, severity: int, seed: int = 0):
        self.base, self.kind, self.severity, self.seed = base, kind, severity, seed
        corrupt(torch.zeros(3, 4, 4), kind, severity)  # fail now on a bad kind or severity

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        from torchvision.transforms.functional import pil_to_tensor

        image, label = self.base[i]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        pixels = image if isinstance(image, torch.Tensor) else pil_to_tensor(image)
        x = corrupt(pixels.float() / 255, self.kind, self.severity, g)
        return (x * 255).round().to(torch.uint8), label


class ShiftDataModule(ImageDataModule):
    """An evaluation-only DataModule (``validate`` / ``test`` / ``evaluate``): a shifted test set,
    batches {"x", "y"} like those of the training data it shifts (CIFAR-10's at 32x32, or digits').
    It is also the FID reference (``reference_set``) of ``evaluate --data``: the shifted set
    itself, for either ``reference_split``.

    Args:
        kind: "svhn" | "stl10" | "cifar10_gaussian_noise" | "cifar10_gaussian_blur" (models trained
            on CIFAR-10) | "digits_gaussian_noise" | "digits_gaussian_blur" (models trained on
            ``DigitsDataModule``: its validation split, corrupted at 8x8; offline).
        severity: 1 to 5, for the corruptions.
        root: for svhn ``root/test_32x32.mat``; stl10 ``root/stl10_binary/``; CIFAR-10
            ``root/cifar-10-batches-py/``.
        download: let torchvision fetch SVHN / STL-10 (CIFAR-10: see CIFAR10DataModule).
        seed: the corruption noise.
        image_size: resize to this (default 32 for the CIFAR-10 kinds, the digits' 8 for digits: set
            the digits model's ``image_size`` when it was trained upsampled).
        val_fraction: the digits kinds: the ``DigitsDataModule`` validation split they corrupt.
    """

    num_classes = 10

    def __init__(
        self,
        kind: str = "svhn",
        severity: int = 3,
        root: str = "data/shift",
        download: bool = False,
        seed: int = 0,
        image_size: int | None = None,
        val_fraction: float = 0.2,
        **kwargs,
    ):
        kwargs.setdefault("random_flip", False)
        if kind.startswith("digits_"):
            kwargs.setdefault("num_workers", 0)  # small images in memory
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not 1 <= severity <= 5:
            raise ValueError(f"severity must be 1 to 5, got {severity}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.kind, self.severity, self.root, self.download, self.seed = kind, severity, Path(root), download, seed
        self.val_fraction = val_fraction
        if kind.startswith("digits_"):
            size = image_size or 8
            self.image_size = None if size == 8 else size  # corrupted at 8x8, then upsampled
            self.data_shape = (1, size, size)
        else:
            self.image_size = image_size or 32
            self.data_shape = (3, self.image_size, self.image_size)

    @property
    def corruption(self) -> str | None:
        """The corruption of the corrupted kinds ("gaussian_noise" or "gaussian_blur"), else None."""
        base, _, corruption = self.kind.partition("_")
        return corruption if base in ("cifar10", "digits") else None

    def _test_split(self) -> Dataset:
        if self.kind.startswith("digits_"):
            clean = DigitsDataModule(val_fraction=self.val_fraction)._splits()[1]
            return Corrupted(clean, self.corruption, self.severity, self.seed)
        if self.kind.startswith("cifar10_"):
            return Corrupted(cifar10_split(self.root, train=False), self.corruption, self.severity, self.seed)
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

    def _splits(self) -> tuple[Dataset, Dataset]:
        """The shifted set is the only split: it stands for "train" and "val" alike (FID's reference)."""
        shifted = self._test_split()
        return shifted, shifted

    def reference_name(self, split: str = "train") -> str:
        """A readable name of the reference set for reports: the shifted set (kind, severity, seed,
        source), whatever the split. (The FID cache is keyed by the set's contents, which the
        corruption's kind, severity and seed are part of.)"""
        parts = [f"kind={self.kind}"]
        if self.corruption is not None:
            parts += [f"severity={self.severity}", f"seed={self.seed}"]
        parts.append(
            f"val_fraction={self.val_fraction}" if self.kind.startswith("digits_") else f"root={self.root.resolve()}"
        )
        return f"ShiftDataModule({', '.join(parts)}, size={'x'.join(map(str, self.data_shape))})"

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit":
            raise ValueError(f"ShiftDataModule({self.kind!r}) is for evaluation (validate / test), not fit")
        self.val_set = self.test_set = LabelledImages(self._splits()[1], image_transform(False, False, self.image_size))
