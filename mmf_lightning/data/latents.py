"""Training in a frozen autoencoder's latent space (the setting of MeanFlow's ImageNet results, iMF, AlphaFlow).

``LatentDataModule`` wraps an image DataModule: its training and validation images are encoded once, in
batches, and the latents kept on disk under a key of the images' contents and the autoencoder's weights, so a
second run (or a second rank) reads them instead of encoding again. Training batches are {"x": latent * scale,
"y": label}; ``decode`` maps model samples back to images for FID and the sample figures, whose reference stays
the image DataModule's own images.

Augmentation happens before encoding or not at all: the latents are of the unflipped images.
"""

import hashlib
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmf_lightning.data.base import DataModuleBase, DictDataset
from mmf_lightning.data.images import ImageDataModule
from mmf_lightning.utils.config import check_count
from mmf_lightning.utils.console import progress
from mmf_lightning.utils.files import atomic_write, file_lock
from mmf_lightning.utils.fingerprint import dataset_fingerprint


class LatentDataModule(DataModuleBase):
    """Batches {"x": (B, c, h, w) latents, "y": labels} of an image DataModule's images, encoded once.

    Args:
        images: the image DataModule (its splits, labels and FID reference set).
        autoencoder: frozen, with ``encode`` / ``decode`` / ``identity`` (``nets.autoencoders``: Stable Diffusion's
            VAE, or a small ``ConvAutoencoder``).
        cache_dir: where the encoded latents are kept (one file per split; a changed image set or autoencoder
            gets new files).
        scale: latents are multiplied by this; None: 1 / (the standard deviation of the training latents),
            so the data the velocity network sees has unit scale (Stable Diffusion's VAE: about 0.18).
        encode_batch_size: images per encoder call.
        batch_size, num_workers, persistent_workers, pin_memory: ``DataModuleBase``.
    """

    def __init__(
        self,
        images: ImageDataModule,
        autoencoder: nn.Module,
        cache_dir: str = "data/latents",
        scale: float | None = None,
        encode_batch_size: int = 64,
        batch_size: int = 128,
        num_workers: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
    ):
        super().__init__(batch_size, num_workers, persistent_workers, pin_memory)
        for name in ("encode", "decode", "identity"):
            if not callable(getattr(autoencoder, name, None)):
                raise TypeError(f"the autoencoder {type(autoencoder).__name__} has no {name}()")
        if scale is not None and not (isinstance(scale, int | float) and 0 < scale < float("inf")):
            raise ValueError(f"scale must be a positive number or None, got {scale!r}")
        self.images = images
        self.autoencoder = autoencoder.requires_grad_(False).eval()
        self.cache_dir = Path(cache_dir).expanduser()
        self.encode_batch_size = check_count("encode_batch_size", encode_batch_size, 1)
        self.fixed_scale = scale
        self.scale: float | None = scale
        self.num_classes = getattr(images, "num_classes", None)
        self._data_shape: tuple[int, ...] | None = None
        self._autoencoder_id: str | None = None  # a hash of its weights: computed once (SD's VAE: 330 MB)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The latent shape (c, h, w), from encoding one image."""
        if self._data_shape is None:
            x = self.images_of("train")[0]["x"][None]
            with torch.no_grad():
                self._data_shape = tuple(self.autoencoder.encode(x).shape[1:])
        return self._data_shape

    # -- the cache ------------------------------------------------------------------------------
    def cache_file(self, split: str, dataset: Dataset) -> Path:
        if self._autoencoder_id is None:
            self._autoencoder_id = self.autoencoder.identity()
        key = f"{type(self.images).__name__}|{split}|{dataset_fingerprint(dataset)}|{self._autoencoder_id}"
        return self.cache_dir / f"{type(self.images).__name__}-{split}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"

    def images_of(self, split: str) -> Dataset:
        """What is encoded: the images the image DataModule trains on ("train": its subset, unflipped) or validates
        on ("val")."""
        return self.images.training_images(augment=False) if split == "train" else self.images.reference_set(split)

    def encoded(self, split: str) -> dict[str, torch.Tensor]:
        """{"z": unscaled latents (N, c, h, w), "y": labels (N,)} of ``images_of(split)``, from the cache or encoded
        now, on the trainer's device, and cached (``files``: under a lock, written whole and renamed into place)."""
        dataset = self.images_of(split)
        path = self.cache_file(split, dataset)
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        with file_lock(path):  # one process encodes; the others wait, then read its file
            if path.is_file():
                return torch.load(path, map_location="cpu", weights_only=True)
            zs, ys = [], []
            loader = DataLoader(dataset, batch_size=self.encode_batch_size, shuffle=False)
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            encoder = self.autoencoder.to(device)
            with torch.no_grad():
                for batch in progress(loader, desc=f"encoding the {split} images", unit="batch", leave=False):
                    zs.append(encoder.encode(batch["x"].to(device)).float().cpu())
                    ys.append(batch["y"])
            out = {"z": torch.cat(zs), "y": torch.cat(ys)}
            with atomic_write(path) as tmp:
                torch.save(out, tmp)
        rank_zero_info(f"encoded {len(out['z'])} {split} images to {tuple(out['z'].shape[1:])} latents: {path}")
        return out

    def prepare_data(self) -> None:
        """Encode once, on one process per node, before any rank reads."""
        self.images.prepare_data()
        for split in ("train", "val"):
            self.encoded(split)

    def setup(self, stage: str | None = None) -> None:
        train, val = self.encoded("train"), self.encoded("val")
        if self.fixed_scale is None:
            self.scale = 1.0 / float(train["z"].std())
        self.train_set = DictDataset(x=train["z"] * self.scale, y=train["y"])
        self.val_set = DictDataset(x=val["z"] * self.scale, y=val["y"])

    # -- back to images -------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model samples (B, c, h, w) in the scaled latent space -> images (B, C, H, W) in [-1, 1]."""
        if self.scale is None:  # from the cached training latents (their std), never by encoding the set here
            path = self.cache_file("train", self.images_of("train"))
            if not path.is_file():
                raise FileNotFoundError(
                    f"decoding needs the latents' scale, from the encoded training latents {path}, which are not "
                    "there; set the DataModule's scale, or run fit once to encode them"
                )
            self.scale = 1.0 / float(torch.load(path, map_location="cpu", weights_only=True)["z"].std())
        decoder = self.autoencoder.to(latents.device)
        with torch.no_grad():
            return decoder.decode(latents / self.scale).clamp(-1, 1)

    def reference_set(self, split: str = "train") -> Dataset:
        """The images (not latents): FID compares decoded samples with them."""
        return self.images.reference_set(split)
