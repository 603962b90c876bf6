"""The paper's path metrics during validation, with the EMA weights, split across ranks."""

import lightning as L

from mmf_lightning.callbacks.fid import lightning_ranks
from mmf_lightning.metrics.evaluation import EvaluationSettings, evaluate_model


class PathMetrics(L.Callback):
    """Logs ``val/{one_step_error, d_path, smoothness}`` at every validation, and by data kind
    ``val/{lpips_path, lpips_diversity}`` (images), ``val/{sw,energy}_{1,2}step`` (low-dimensional
    data), ``val/{path_error, end_error, one_step_error_truth}`` (trajectory tasks). Definitions:
    docs/metrics.md. Computed like FID: in the hook after the first validation batch (EMA
    weights in), samples in seeded blocks split across ranks, equal on every rank.

    Args:
        num_samples, steps, batch_size, seed, distance_samples: as in ``EvaluationSettings``.
        lpips: LPIPS metrics on image data (needs LPIPS' AlexNet weights; checked before training).
        lpips_weights_path: torchvision's AlexNet weights file (else the torch hub cache).
    """

    def __init__(
        self,
        num_samples: int = 500,
        steps: int = 8,
        batch_size: int = 250,
        seed: int = 0,
        distance_samples: int = 2000,
        lpips: bool = True,
        lpips_weights_path: str | None = None,
    ):
        self.settings = EvaluationSettings(num_samples, steps, batch_size, seed, distance_samples, timing_repeats=0)
        self.use_lpips, self.lpips_weights_path = lpips, lpips_weights_path
        self.lpips = None
        self.last: dict[str, float] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage in ("fit", "validate") and self.use_lpips and hasattr(trainer.datamodule, "reference_set"):
            from mmf_lightning.metrics.lpips import LPIPS

            self.lpips = LPIPS(self.lpips_weights_path)  # fails now if the weights are missing

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking:
            return
        lpips = self.lpips.to(pl_module.device) if self.lpips is not None else None
        self.last = evaluate_model(pl_module, trainer.datamodule, self.settings, lightning_ranks(trainer), lpips)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for name, value in self.last.items():
            pl_module.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)

    def state_dict(self) -> dict:
        return {}
