"""What the FID and path-metric callbacks share: measured once per validation, with the EMA weights,
on every rank, logged as ``val/<name>``, never checkpointed."""

import lightning as L

from mmf_lightning.metrics.ranks import Ranks


def lightning_ranks(trainer) -> Ranks:
    """The Trainer's ranks: sums through its strategy."""
    strategy = trainer.strategy
    return Ranks(
        trainer.global_rank, trainer.world_size, lambda t: strategy.reduce(t, reduce_op="sum"), strategy.barrier
    )


class ValidationMetric(L.Callback):
    """Calls ``measure_validation`` in the hook after the first validation batch: Lightning's
    WeightAveraging callbacks have swapped the EMA weights in by then (their swap runs at the start
    of the validation epoch, whatever the callback order). Every rank measures, so every rank
    gets the same values; they are logged at the epoch's end, after Lightning resets its
    epoch-level results."""

    def __init__(self):
        self.last: dict[str, float] = {}

    def measure_validation(self, trainer, pl_module, ranks: Ranks) -> dict[str, float]:
        raise NotImplementedError

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking:
            return
        self.last = self.measure_validation(trainer, pl_module, lightning_ranks(trainer))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        # every rank holds the same values: their mean across ranks is the value (sync_dist says
        # so to Lightning, which otherwise warns on every epoch-level metric under DDP)
        pl_module.log_dict({f"val/{name}": value for name, value in self.last.items()}, sync_dist=True)

    def state_dict(self) -> dict:
        return {}  # feature extractors and their statistics never go into checkpoints
