"""Image datasets as LightningDataModules. Pixels are scaled to [-1, 1]; batches are
{"x": (B, C, H, W), "y": (B,)}."""

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], for saving or for feature extractors that expect [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


class _Labelled(Dataset):
    """(image, label) pairs -> {"x": image, "y": label}."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        x, y = self.base[i]
        return {"x": x, "y": torch.as_tensor(y, dtype=torch.long)}


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 through torchvision (the "python version" batches).

    Args:
        root: folder holding ``cifar-10-batches-py/``.
        download: fetch the archive into ``root`` if missing (off by default: compute nodes
            often have no internet; stage the data once with download=true elsewhere).
        batch_size: per-device batch size.
        random_flip: random horizontal flips of training images.
        num_workers: dataloader workers.
    """

    data_shape = (3, 32, 32)
    num_classes = 10
    folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

    def __init__(
        self,
        root: str = "data/cifar10",
        download: bool = False,
        batch_size: int = 128,
        random_flip: bool = True,
        num_workers: int = 4,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = Path(root)
        self.download = download
        self.batch_size = batch_size
        self.random_flip = random_flip
        self.num_workers = num_workers

    def prepare_data(self) -> None:
        if self.download and not (self.root / self.folder).is_dir():
            from torchvision.datasets import CIFAR10

            try:
                CIFAR10(str(self.root), train=True, download=True)
            except OSError as err:  # URLError is an OSError
                raise RuntimeError(
                    f"could not download CIFAR-10 from {self.url} into {self.root} ({err}); on a machine without "
                    f"internet, download and extract the archive elsewhere and copy {self.folder}/ into {self.root}"
                ) from err

    def _dataset(self, train: bool) -> Dataset:
        from torchvision import transforms
        from torchvision.datasets import CIFAR10

        if not (self.root / self.folder).is_dir():
            raise FileNotFoundError(
                f"CIFAR-10 not found: expected {self.root / self.folder}/ (the extracted {self.url}). "
                f"Copy it there, or set data.init_args.download=true on a machine with internet"
            )
        steps = [transforms.RandomHorizontalFlip()] if train and self.random_flip else []
        steps += [transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]
        try:
            base = CIFAR10(str(self.root), train=train, transform=transforms.Compose(steps))
        except RuntimeError as err:  # torchvision's integrity check
            raise RuntimeError(
                f"CIFAR-10 under {self.root} is incomplete or corrupt ({err}); delete {self.root / self.folder} "
                "and stage it again"
            ) from err
        return _Labelled(base)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._dataset(train=True)
        self.val_set = self._dataset(train=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
