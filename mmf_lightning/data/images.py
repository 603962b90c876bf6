"""Image datasets as LightningDataModules. Pixels are scaled to [-1, 1] (``to_unit_range`` maps
back); batches are {"x": (B, C, H, W), "y": (B,)}; random horizontal flips are optional, and a
deterministic class-balanced ``subset_fraction`` of the training split is the low-data setting
of paper section 5.4.

Nothing downloads unless a DataModule is told to (``download=True``); a missing dataset stops the
run in ``setup``, before training, with the path it looked in and the two ways to provide it.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mmf_lightning.data.base import DataModuleBase
from mmf_lightning.data.subsets import balanced_subset, check_fraction
from mmf_lightning.utils.files import atomic_write, file_lock


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], for saving or for feature extractors that expect [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


def image_transform(train: bool, random_flip: bool, image_size: int | None = None):
    """PIL image or uint8 (C, H, W) tensor -> float (C, H, W) in [-1, 1]."""
    from torchvision.transforms import v2

    steps = [v2.ToImage()]
    if image_size is not None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if train and random_flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])]
    return v2.Compose(steps)


class LabelledImages(Dataset):
    """(image, label) pairs -> {"x": transform(image), "y": label}."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        image, label = self.base[i]
        return {"x": self.transform(image), "y": torch.as_tensor(label, dtype=torch.long)}


class ArrayImages(Dataset):
    """uint8 images (N, C, H, W) (an array or a memory map) and labels (N,) -> (tensor, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.array(self.images[i])), int(self.labels[i])  # a writable copy


def missing(what: str, path: Path, fix: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found: expected {path}; {fix[0].lower()}{fix[1:]}")


class ImageDataModule(DataModuleBase):
    """Base for image DataModules: subclasses give ``_splits() -> (train, val)`` datasets of
    (image, label) and ``_train_labels()``.

    Args:
        random_flip: random horizontal flips of training images.
        subset_fraction: keep this class-balanced fraction of the training split, in (0, 1].
        subset_seed: which subset; the same on every rank.
        batch_size, num_workers, persistent_workers, pin_memory: see ``DataModuleBase``.
    """

    image_size: int | None = None

    def __init__(
        self,
        batch_size: int = 128,
        random_flip: bool = True,
        subset_fraction: float = 1.0,
        subset_seed: int = 0,
        num_workers: int = 4,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
    ):
        super().__init__(batch_size, num_workers, persistent_workers, pin_memory)
        self.random_flip = random_flip
        self.subset_fraction = check_fraction(subset_fraction)
        self.subset_seed = subset_seed

    def _splits(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def _train_labels(self, train: Dataset) -> Sequence[int]:
        return [train[i][1] for i in range(len(train))]

    def reference_set(self, split: str = "train") -> Dataset:
        """The whole ``split`` ("train" or "val") without augmentation or subsetting: the
        reference images of FID (whose statistics are cached under a fingerprint of this set's
        contents, ``metrics.fingerprint``)."""
        if split not in ("train", "val"):
            raise ValueError(f"reference split must be 'train' or 'val', got {split!r}")
        base = self._splits()[0 if split == "train" else 1]
        return LabelledImages(base, image_transform(False, False, self.image_size))

    def training_images(self, augment: bool = True) -> Dataset:
        """The images this module trains on: the training split, or its ``subset_fraction``; with ``augment``
        False, without random flips (what ``LatentDataModule`` encodes)."""
        train = self._splits()[0]
        if self.subset_fraction < 1.0:
            train = Subset(train, balanced_subset(self._train_labels(train), self.subset_fraction, self.subset_seed))
        return LabelledImages(train, image_transform(True, augment and self.random_flip, self.image_size))

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self.training_images()
        self.val_set = LabelledImages(self._splits()[1], image_transform(False, False, self.image_size))


class DigitsDataModule(ImageDataModule):
    """scikit-learn's digits: 1797 real 8x8 grey images of 0-9, shipped with the package (no
    download); for offline demos and tests. ``image_size`` upsamples (e.g. 16 or 32).
    The last ``val_fraction`` of each class is the validation split."""

    data_shape = (1, 8, 8)
    num_classes = 10

    def __init__(self, image_size: int = 8, val_fraction: float = 0.2, random_flip: bool = False, **kwargs):
        kwargs.setdefault("batch_size", 64)
        kwargs.setdefault("num_workers", 0)
        super().__init__(random_flip=random_flip, **kwargs)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.image_size = None if image_size == 8 else image_size
        self.data_shape = (1, image_size, image_size)

    def _splits(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
        labels = digits.target.astype(np.int64)
        val = np.zeros(len(labels), dtype=bool)
        for c in range(10):
            idx = np.nonzero(labels == c)[0]
            val[idx[len(idx) - round(self.val_fraction * len(idx)) :]] = True
        self._labels = labels[~val]
        return ArrayImages(images[~val], labels[~val]), ArrayImages(images[val], labels[val])

    def _train_labels(self, train):
        return self._labels


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 through torchvision (the "python version" batches).

    Args:
        root: folder holding ``cifar-10-batches-py/``.
        download: fetch the archive into ``root`` if missing (off by default: compute nodes
            often have no internet; stage the data once with download=true elsewhere).
        (the rest: ``ImageDataModule``)
    """

    data_shape = (3, 32, 32)
    num_classes = 10
    folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

    def __init__(self, root: str = "data/cifar10", download: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.root, self.download = Path(root), download

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

    def _splits(self):
        return cifar10_split(self.root, True), cifar10_split(self.root, False)

    def _train_labels(self, train):
        return train.targets


def cifar10_split(root: Path, train: bool):
    from torchvision.datasets import CIFAR10

    if not (root / CIFAR10DataModule.folder).is_dir():
        raise missing(
            "CIFAR-10",
            root / CIFAR10DataModule.folder,
            f"Copy the extracted {CIFAR10DataModule.url} there, or set data.init_args.download=true on a machine "
            "with internet",
        )
    try:
        return CIFAR10(str(root), train=train)
    except RuntimeError as err:  # torchvision's integrity check
        raise RuntimeError(
            f"CIFAR-10 under {root} is incomplete or corrupt ({err}); delete {root / CIFAR10DataModule.folder} "
            "and stage it again"
        ) from err


class ImageNet64DataModule(ImageDataModule):
    """Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017), 1000 classes.

    ``format="npz"``: the published batches ``train_data_batch_1.npz`` ... ``train_data_batch_10.npz``
    and ``val_data.npz`` in ``root`` (arrays ``data`` (N, 12288) uint8, channel-major, and
    ``labels`` 1..1000). ``prepare_data`` (once per node, before ``setup``) joins them into
    ``root/cache/{train,val}_{images,labels}.npy`` (about 16 GB for train), which every rank and
    every later run memory-maps instead of loading.
    ``format="folder"``: ``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` (any image
    files), resized to 64.
    """

    data_shape = (3, 64, 64)
    num_classes = 1000

    def __init__(self, root: str = "data/imagenet64", format: str = "npz", **kwargs):
        super().__init__(**kwargs)
        if format not in ("npz", "folder"):
            raise ValueError(f"format must be 'npz' or 'folder', got {format!r}")
        self.root, self.format = Path(root), format
        if format == "folder":
            self.image_size = 64

    def _splits(self):
        if self.format == "folder":
            return (image_folder(self.root / "train", verify=False), image_folder(self.root / "val", verify=False))
        return self._npz_split("train"), self._npz_split("val")

    def prepare_data(self) -> None:
        """``format="npz"``: joins the batches into the memory-mapped cache, once. Lightning calls
        this on one process per node (local rank 0) and holds the others at a barrier; a lock
        makes two nodes sharing the disk, or a second job, wait for the first instead of building
        it again."""
        if self.format == "npz":
            for split in ("train", "val"):
                self._build_npy_cache(split)

    def _cache_files(self, split: str) -> tuple[Path, Path]:
        cache = self.root / "cache"
        return cache / f"{split}_images.npy", cache / f"{split}_labels.npy"

    def _build_npy_cache(self, split: str) -> None:
        images_npy, labels_npy = self._cache_files(split)
        if images_npy.is_file() and labels_npy.is_file():
            return
        self._npz_files(split)  # missing batches: the error names them, before any folder is made
        with file_lock(images_npy):
            if images_npy.is_file() and labels_npy.is_file():  # built by another process meanwhile
                return
            self._write_npy_cache(split)

    def _write_npy_cache(self, split: str) -> None:
        """Copies the batches one at a time into a memory-mapped ``.npy`` (peak memory: one batch,
        not the 16 GB split), each file under a temporary name of its own, then renamed."""
        from mmf_lightning.utils.console import progress

        images_npy, labels_npy = self._cache_files(split)
        files = self._npz_files(split)
        labels = [self._read_batch(f, "labels") for f in files]
        total = sum(len(lab) for lab in labels)
        with atomic_write(images_npy) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, 3, 64, 64))
            start = 0
            for f, lab in progress(list(zip(files, labels)), desc=f"ImageNet-64 {split} cache", unit="batch"):
                data = self._read_batch(f, "data")
                if data.ndim != 2 or data.shape[1] != 3 * 64 * 64 or len(lab) != len(data):
                    raise ValueError(f"{f}: expected data (N, 12288) and N labels, got {data.shape} and {len(lab)}")
                out[start : start + len(data)] = data.reshape(-1, 3, 64, 64)
                start += len(data)
            out.flush()
            del out
        with atomic_write(labels_npy) as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate([np.asarray(lab, dtype=np.int64) - 1 for lab in labels]))  # classes from 1

    def _npz_split(self, split: str) -> ArrayImages:
        """The split, memory-mapped from the cache. Without ``prepare_data`` before (a notebook,
        ``evaluate``), the cache is built here, under the same lock."""
        images_npy, labels_npy = self._cache_files(split)
        if not (images_npy.is_file() and labels_npy.is_file()):
            self._build_npy_cache(split)
        return ArrayImages(np.load(images_npy, mmap_mode="r"), np.load(labels_npy))

    def _npz_files(self, split: str) -> list[Path]:
        pattern = "train_data_batch_*.npz" if split == "train" else "val_data.npz"
        files = sorted(self.root.glob(pattern), key=lambda p: int(p.stem.rsplit("_", 1)[-1]) if split == "train" else 0)
        if not files:
            raise missing(
                "ImageNet-64 (npz)",
                self.root / pattern,
                "Download Imagenet64_train_part1/2_npz and Imagenet64_val_npz from image-net.org "
                "(downsampled ImageNet) and extract them there, or use format: folder",
            )
        return files

    @staticmethod
    def _read_batch(f: Path, key: str) -> np.ndarray:
        try:
            with np.load(f) as batch:
                return batch[key]
        except Exception as err:  # BadZipFile, EOFError, KeyError, ValueError: all mean "not a good batch"
            raise ValueError(f"{f} is truncated or not an ImageNet-64 batch ({err!r}); download it again") from err

    def _train_labels(self, train):
        return train.labels if isinstance(train, ArrayImages) else train.targets


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def image_folder(root: Path, verify: bool = True, require_one_size: bool = False):
    """torchvision's ImageFolder (``root/<class>/<image>``) with the checks a long run needs first:
    the folder exists and holds images; with ``verify`` every file decodes; with
    ``require_one_size`` all images share one size."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    from mmf_lightning.utils.console import progress

    root = Path(root)
    if not root.is_dir():
        raise missing("image folder", root, "Point root at a folder with one sub-folder of images per class")
    try:
        dataset = ImageFolder(str(root))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no images under {root} ({err}); expected {root}/<class>/<image> with extensions {IMAGE_EXTENSIONS}"
        ) from err
    if verify or require_one_size:
        first = None
        for path, _ in progress(dataset.samples, desc=f"checking {root}", unit="image", leave=False):
            try:
                with Image.open(path) as im:
                    size = im.size
                    if verify:
                        im.verify()
            except Exception as err:
                raise ValueError(f"{path} is not a readable image ({err}); remove or replace it") from err
            if require_one_size:
                if first is None:
                    first = (path, size)
                elif size != first[1]:
                    raise ValueError(
                        f"images of different sizes: {first[0]} is {first[1][0]}x{first[1][1]}, {path} is "
                        f"{size[0]}x{size[1]}; set image_size to resize them all"
                    )
    return dataset


class _ConvertedLoader:
    """Opens an image file as a PIL image in one mode (picklable, for dataloader workers)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, path: str):
        from PIL import Image

        with Image.open(path) as im:
            return im.convert(self.mode)


class ImageFolderDataModule(ImageDataModule):
    """Your own images: ``root/<class>/<image>`` (the class is the folder), optionally
    ``val_root`` with the same classes, else the last ``val_fraction`` of each class.

    Args:
        image_size: resize (shorter side) and centre-crop to this size; None keeps the files'
            size, which must then be one size for all.
        channels: 3 (RGB) or 1 (grey).
        verify: decode every file in ``setup`` (with a progress bar), so a broken file stops
            the run before training rather than hours into it.
        (the rest: ``ImageDataModule``)
    """

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        channels: int = 3,
        val_root: str | None = None,
        val_fraction: float = 0.05,
        verify: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.root, self.val_root = Path(root), Path(val_root) if val_root else None
        self.image_size, self.channels, self.val_fraction, self.verify = image_size, channels, val_fraction, verify
        self._train = self._folder(self.root)  # read now: data_shape and num_classes come from the files
        self.num_classes = len(self._train.classes)
        self.data_shape = (channels, *self._size(self._train))

    def _folder(self, root: Path):
        dataset = image_folder(root, verify=self.verify, require_one_size=self.image_size is None)
        dataset.loader = _ConvertedLoader("RGB" if self.channels == 3 else "L")
        return dataset

    def _size(self, dataset) -> tuple[int, int]:
        if self.image_size is not None:
            return self.image_size, self.image_size
        from PIL import Image

        with Image.open(dataset.samples[0][0]) as im:
            return im.size[1], im.size[0]

    def _splits(self):
        train = self._train
        if self.val_root is not None:
            val = self._folder(self.val_root)
            if val.classes != train.classes:
                raise ValueError(
                    f"{self.val_root} has classes {val.classes[:5]}..., {self.root} {train.classes[:5]}..."
                )
            return train, val
        targets = np.asarray(train.targets)
        is_val = np.zeros(len(targets), dtype=bool)
        for c in np.unique(targets):
            idx = np.nonzero(targets == c)[0]
            is_val[idx[len(idx) - max(1, round(self.val_fraction * len(idx))) :]] = True
        self._labels = targets[~is_val]
        return Subset(train, np.nonzero(~is_val)[0].tolist()), Subset(train, np.nonzero(is_val)[0].tolist())

    def _train_labels(self, train):
        return self._labels if isinstance(train, Subset) else train.targets
