"""What every DataModule shares: batches as dicts, and the dataloader settings.

Under DDP Lightning gives every map-style dataset a DistributedSampler, so each rank reads
its own shard; the data itself (subsets, synthetic sets, trajectories) is built from a seed,
so every rank builds the same set before it is sharded.

``batch_size`` is the global batch of one optimizer step, the number papers give: each of the
world's ranks loads ``batch_size / (world_size * accumulate_grad_batches)`` rows per micro-batch,
so a config trains with the same batch (and so the same learning rate means the same thing) on
one CPU, one GPU or eight.
"""

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


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
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        if train and len(dataset) < self.batch_size:
            raise ValueError(
                f"{type(self).__name__}: the training set has {len(dataset)} items, fewer than one batch of "
                f"{self.batch_size}; lower batch_size"
            )
        return DataLoader(
            dataset,
            batch_size=self.device_batch_size(train),
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory,
            # a DataLoader draws a seed from its generator at every pass: evaluation loaders get their
            # own, so validating does not move training's random stream
            generator=None if train else torch.Generator().manual_seed(0),
        )

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
