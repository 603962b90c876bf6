"""What every DataModule shares: batches as dicts, and the dataloader settings.

Under DDP Lightning gives every map-style dataset a DistributedSampler, so each rank reads
its own shard; the data itself (subsets, synthetic sets, trajectories) is built from a seed,
so every rank builds the same set before it is sharded.

``batch_size`` is the global batch of one optimizer step, the number papers give: each of the
world's ranks loads ``batch_size / (world_size * accumulate_grad_batches)`` rows per micro-batch,
so a config trains with the same batch (and so the same learning rate means the same thing) on
one CPU, one GPU or eight.

Training order is a function of (seed, epoch) alone (``ResumableSampler``), and a run resumed
from a checkpoint taken mid-epoch skips the batches that epoch already gave: a resumed run sees
the data an uninterrupted one would.
"""

import os

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from mmf_lightning.nets.embeddings import check_labels
from mmf_lightning.utils.config import check_count


class DictDataset(Dataset):
    """Tensors of equal length -> {"key": tensor[i], ...}."""

    def __init__(self, **tensors: torch.Tensor):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of unequal length: { {k: len(v) for k, v in tensors.items()} }")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.tensors.items()}


class DataModuleBase(L.LightningDataModule):
    """Dataloaders for ``self.train_set`` / ``self.val_set`` (set by ``setup``).

    Args:
        batch_size: the global batch of one optimizer step, over all devices and accumulated
            micro-batches (module docstring).
        num_workers: dataloader worker processes.
        persistent_workers: keep workers alive between epochs (when num_workers > 0).
        pin_memory: page-locked host memory; None means "when a GPU is present".
    """

    data_shape: tuple[int, ...]
    num_classes: int | None = None

    def __init__(
        self, batch_size: int, num_workers: int = 0, persistent_workers: bool = True, pin_memory: bool | None = None
    ):
        super().__init__()
        self.batch_size = check_count("batch_size", batch_size, 1)
        self.num_workers = check_count("num_workers", num_workers)
        self.persistent_workers = persistent_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        if train and len(dataset) < self.batch_size:
            raise ValueError(
                f"{type(self).__name__}: the training set has {len(dataset)} items, fewer than one batch of "
                f"{self.batch_size}; lower batch_size"
            )
        batch = self.device_batch_size(train)
        sampler = self._train_sampler(dataset, batch) if train else None
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory,
            # a DataLoader draws a seed (its workers') from its generator at every pass: not from torch's global one,
            # so no pass moves the stream the objective draws from. The training pass's seed is a function of
            # (seed, epoch, rank): a run resumed at an epoch's end draws what the whole run draws after it.
            generator=sampler.loader_generator if train else torch.Generator().manual_seed(0),
        )

    def _train_sampler(self, dataset: Dataset, batch: int) -> "ResumableSampler":
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(dataset, world, rank, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        if trainer is not None and batch:
            # a resumed run: the batches of its epoch that went through an optimizer step were seen
            # (``processed``: a checkpoint saved at batch end precedes the batch's ``completed``)
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            per_epoch = max(1, batches_per_epoch(len(sampler) // batch, trainer.limit_train_batches))
            sampler.set_epoch(trainer.current_epoch + done // per_epoch)
            sampler.skip = (done % per_epoch) * batch
        return sampler

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Labels are checked here, where they enter, while they are on the host: a check in the network's forward
        would be a device-to-host sync per call on an accelerator (the module's setup checks that the network has
        this module's ``num_classes``)."""
        y = batch.get("y") if isinstance(batch, dict) else None
        if self.num_classes and torch.is_tensor(y) and y.dim() == 1:
            check_labels(y, self.num_classes)
        return batch

    def device_batch_size(self, train: bool = True) -> int:
        """Rows per micro-batch on each rank: ``batch_size`` split over the ranks (and, for training,
        the accumulated micro-batches) of the Trainer this DataModule is attached to."""
        trainer = self.trainer
        if trainer is None:
            return self.batch_size
        return split_batch(self.batch_size, trainer.world_size, trainer.accumulate_grad_batches if train else 1)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(getattr(self, "test_set", self.val_set), train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def reference_points(datamodule, n: int) -> torch.Tensor | None:
    """``n`` points of a low-dimensional datamodule's data (its ``reference_samples``), for plots drawn over the data;
    None for data that has none (images, trajectories)."""
    sampler = getattr(datamodule, "reference_samples", None)
    return sampler(n).float() if callable(sampler) else None


def batches_per_epoch(full: int, limit: int | float | None) -> int:
    """The training batches of an epoch of ``full`` under ``limit_train_batches`` (a count, or a fraction of
    ``full``), as Lightning counts them."""
    if limit is None:
        return full
    return min(full, limit) if isinstance(limit, int) else int(full * limit)


def split_batch(global_batch: int, world_size: int, accumulate: int = 1) -> int:
    """The per-rank micro-batch of a global batch; an error naming all three when it does not divide."""
    parts = world_size * accumulate
    if global_batch % parts:
        raise ValueError(
            f"batch_size={global_batch} is the global batch of one optimizer step and must divide into "
            f"{world_size} rank(s) x {accumulate} accumulated micro-batch(es) = {parts}; set data.init_args.batch_size "
            f"to a multiple of {parts} (e.g. {max(parts, global_batch // parts * parts)})"
        )
    return global_batch // parts


class ResumableSampler(DistributedSampler):
    """The training order: this rank's share of a permutation drawn from (seed, epoch) alone (as
    Lightning's DistributedSampler, which it replaces on one device too), and ``skip`` indices left
    out of the next pass only, for a run resumed mid-epoch. Lightning calls ``set_epoch``."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.loader_generator = torch.Generator()  # the DataLoader's: reseeded every epoch
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.loader_generator.manual_seed(((self.seed * 1_000_003 + epoch) * 1_009 + self.rank) % 2**63)

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])
