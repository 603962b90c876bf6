"""FID during validation, with the EMA weights, split across ranks, exact under DDP."""

import torch
from torch import nn

from mmf_lightning.callbacks.validation_metric import ValidationMetric, lightning_ranks
from mmf_lightning.metrics.features import freeze, inception_v3, to_uint8
from mmf_lightning.metrics.fid import (
    cache_file,
    cache_key,
    feature_statistics,
    load_statistics,
    make_fid,
    reference_key,
    save_statistics,
    set_real_statistics,
)
from mmf_lightning.metrics.ranks import SINGLE, Ranks
from mmf_lightning.utils.console import progress as progress_bar


class FID(ValidationMetric):
    """Computes FID of the model's samples against a reference split at every validation.

    Samples are drawn after the first validation batch, with the EMA weights (ValidationMetric),
    and logged as ``val/fid_{k}step``. The samples are cut into blocks of
    ``batch_size``; block b is drawn with seed (seed, b) on rank b mod world_size, so N samples
    over any number of ranks are the same N samples. ``compute`` runs on every rank.

    The extractor lives here, frozen, not in the LightningModule: it is in no checkpoint, no EMA
    and no DDP gradient bucket.

    Args:
        num_samples: generated samples per FID (50k for the paper's numbers).
        steps: sampling step counts, one FID each (logged as ``val/fid_{k}step``).
        reference_split: "train" (the usual protocol) or "val".
        feature_extractor: any frozen nn.Module, uint8 images -> features (docs/metrics.md);
            None is InceptionV3 pool3, 2048-d, resized as torch-fidelity does.
        feature_extractor_weights_path: the Inception weights file (else the torch hub cache).
        batch_size: generation and feature batch size.
        cache_dir: where reference statistics are kept, keyed by what they are computed from: the
            reference set's fingerprint (length and contents, or its files' names, sizes and
            mtimes) and the extractor's class and weights.
        seed: the samples' seed.
    """

    def __init__(
        self,
        num_samples: int = 50_000,
        steps: tuple[int, ...] = (1, 2),
        reference_split: str = "train",
        feature_extractor: nn.Module | None = None,
        feature_extractor_weights_path: str | None = None,
        batch_size: int = 250,
        cache_dir: str = "~/.cache/mmf_lightning/fid",
        seed: int = 0,
    ):
        if num_samples < 2 or batch_size < 1 or not steps or min(steps) < 1:
            raise ValueError(
                f"need num_samples >= 2, batch_size >= 1, steps >= 1, got {num_samples}, {batch_size}, {steps}"
            )
        if reference_split not in ("train", "val"):
            raise ValueError(f"reference_split must be 'train' or 'val', got {reference_split!r}")
        self.num_samples, self.steps, self.reference_split = num_samples, tuple(steps), reference_split
        self.extractor = feature_extractor
        self.weights_path, self.batch_size, self.cache_dir, self.seed = (
            feature_extractor_weights_path,
            batch_size,
            cache_dir,
            seed,
        )
        super().__init__()
        self.metrics: dict[int, nn.Module] = {}
        self.decode = None  # set by prepare for latent-space data (``LatentDataModule.decode``)

    # -- before training: weights, extractor, reference statistics ---------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        """Fails now, before any work, on non-image data or missing weights."""
        if stage in ("fit", "validate"):
            self.load_extractor(trainer.datamodule)

    def on_fit_start(self, trainer, pl_module) -> None:
        """The reference statistics, before the first training step (the model is on its device
        by now; `validate` gets them at its first batch)."""
        if not self.metrics:
            self.prepare(trainer.datamodule, pl_module.device, lightning_ranks(trainer))

    def load_extractor(self, datamodule) -> None:
        if not hasattr(datamodule, "reference_set"):
            raise ValueError(
                f"FID needs an image DataModule with reference_set(); {type(datamodule).__name__} has none"
            )
        if self.extractor is None:
            self.extractor = inception_v3(self.weights_path)
        self.extractor = freeze(self.extractor)

    def prepare(self, datamodule, device, ranks: Ranks = SINGLE) -> None:
        """Loads the extractor and the reference statistics (from the cache, or computed over ranks)."""
        self.load_extractor(datamodule)
        self.extractor = self.extractor.to(device)
        self.decode = getattr(datamodule, "decode", None)  # latent-space data: samples -> images
        stats = self._reference_statistics(datamodule, device, ranks)
        for k in self.steps:
            fid = make_fid(self.extractor).to(device)
            set_real_statistics(fid, stats, ranks.rank)
            self.metrics[k] = fid

    def _reference_statistics(self, dm, device, ranks: Ranks) -> dict | None:
        """The reference statistics on rank 0 (None elsewhere once cached). Rank 0 fingerprints the
        reference set and looks in the cache; one sum tells every rank whether it found them, so
        all ranks load or all compute (a cache written meanwhile by another run cannot split them)."""
        dataset = dm.reference_set(self.reference_split)
        stats = key = path = None
        if ranks.is_zero:
            dataset_key = reference_key(dm, self.reference_split, dataset)
            key = cache_key(dataset_key, self.extractor)
            path = cache_file(self.cache_dir, key)
            stats = load_statistics(path, key)
        found = ranks.all_sum(torch.tensor(0.0 if stats is None else 1.0, device=device))
        if float(found) > 0:
            return {k: v.to(device) for k, v in stats.items()} if stats is not None else None
        stats = feature_statistics(self.extractor, dataset, self.batch_size, device, ranks.rank, ranks.world_size)
        stats = {k: ranks.all_sum(v) for k, v in stats.items()}
        if ranks.is_zero:
            save_statistics(path, key, stats)
        ranks.barrier()
        return stats

    # -- validation: generate with the EMA weights, compute on every rank -------------------------------
    def measure_validation(self, trainer, pl_module, ranks: Ranks) -> dict[str, float]:
        if not self.metrics:
            self.prepare(trainer.datamodule, pl_module.device, ranks)
        return {f"fid_{k}step": value for k, value in self.measure(pl_module, ranks).items()}

    def measure(self, module, ranks: Ranks = SINGLE, progress: bool = False) -> dict[int, float]:
        """FID of ``module``'s samples for each number of steps: {steps: value}, equal on every rank."""
        out = {}
        for k, fid in self.metrics.items():
            blocks = ranks.seeded_blocks(self.num_samples, self.batch_size, self.seed, module.device)
            for n, g in progress_bar(
                blocks, desc=f"FID ({k} step)", disable=not (progress and ranks.is_zero), leave=False
            ):
                samples = module.sample(n, k, generator=g)
                fid.update(to_uint8(self.decode(samples) if self.decode else samples), real=False)
            out[k] = float(fid.compute())  # all-reduces the feature sums: every rank gets the same value
            fid.reset()  # fake features only: the real ones persist
        return out
