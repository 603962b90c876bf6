"""EMA of the weights that survives spawn-based DDP.

Lightning's EMAWeightAveraging keeps ``torch.optim.swa_utils.get_ema_avg_fn(decay)``, a closure,
which ``strategy=ddp_spawn`` (and ``ddp_notebook`` elsewhere than Linux) cannot pickle when it
sends the trainer to the new processes. This one keeps the same update as a small object.
"""

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMA
from torch.optim.swa_utils import AveragedModel


class EMAUpdate:
    """``ema <- decay * ema + (1 - decay) * current``: torch's EMA update, picklable. ``kept``: a
    device flag (False: the optimizer step was skipped, ``module.SkipGuard``) that leaves the
    average as it is, without a host sync."""

    def __init__(self, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.kept: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, ema_param: torch.Tensor, current_param: torch.Tensor, num_averaged) -> torch.Tensor:
        new = self.decay * ema_param + (1 - self.decay) * current_param
        return new if self.kept is None else torch.where(self.kept.to(new.device), new, ema_param)

    def __getstate__(self) -> dict:
        return {"decay": self.decay, "kept": None}

    def __repr__(self) -> str:
        return f"EMAUpdate(decay={self.decay})"


class EMAWeightAveraging(LightningEMA):
    """Lightning's ``EMAWeightAveraging`` (same arguments, same updates and checkpoints) with a
    picklable averaging function, so every strategy, spawn-based ones included, can use it."""

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
    ):
        super().__init__(
            device=device,
            use_buffers=use_buffers,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
        )
        self._kwargs["avg_fn"] = EMAUpdate(decay)

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Lightning's, without its warning for modules that define configure_model: MeanFlowModule's shards the
        # net only with model.shard, which refuses this callback before training (sharding.check_sharding)
        if stage == "fit":
            device = self._device or pl_module.device
            self._average_model = AveragedModel(pl_module, device=device, use_buffers=self._use_buffers, **self._kwargs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._kwargs["avg_fn"].kept = getattr(pl_module, "last_step_kept", None)  # a skipped step moves nothing
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
