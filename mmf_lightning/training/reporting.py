"""What a run reports about itself: the batch and learning rate it trains with, and the loss variance (the paper's
training-stability measure) over a window of recent steps."""

from collections import deque

import torch
from lightning.pytorch.utilities import rank_zero_info


def report_batch_and_lr(trainer, lr: float) -> None:
    """Says, and logs as hyperparameters, the batch one optimizer step sees over all devices and the learning rate
    it is taken with: what a paper's recipe fixes, whatever the hardware."""
    dm = trainer.datamodule
    world, accumulate = trainer.world_size, trainer.accumulate_grad_batches
    if callable(getattr(dm, "device_batch_size", None)):
        per_device = dm.device_batch_size(train=True)
    elif isinstance(getattr(dm, "batch_size", None), int):  # a DataModule of its own: batch_size per device
        per_device = dm.batch_size
    else:
        return
    facts = {
        "global_batch_size": per_device * world * accumulate,
        "device_batch_size": per_device,
        "world_size": world,
        "accumulate_grad_batches": accumulate,
        "lr": lr,
    }
    rank_zero_info(
        f"global batch {facts['global_batch_size']} = {world} device(s) x {per_device} rows x {accumulate} "
        f"accumulated micro-batch(es) per optimizer step; learning rate {lr:g} (not scaled with the batch)"
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(facts)


class LossWindow(deque):
    """The last ``maxlen`` training losses, one per optimizer step, as device tensors (no sync to append)."""

    def variance(self) -> torch.Tensor | None:
        """Unbiased variance of the window (None before two steps); skipped steps' NaNs are left out, without a
        sync."""
        if len(self) < 2:
            return None
        device = self[-1].device  # values restored from a checkpoint are on the CPU
        values = torch.stack([v.to(device) for v in self])
        finite = torch.isfinite(values)
        n = finite.sum()
        mean = torch.where(finite, values, 0.0).sum() / n
        return torch.where(finite, (values - mean) ** 2, 0.0).sum() / (n - 1)
