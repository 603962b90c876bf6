"""The paper's path metrics during validation, with the EMA weights, split across ranks."""

from mmf_lightning.callbacks.validation_metric import ValidationMetric
from mmf_lightning.metrics.evaluation import EvaluationSettings, evaluate_model, truth_protocol
from mmf_lightning.metrics.ranks import Ranks


class PathMetrics(ValidationMetric):
    """Logs ``val/{one_step_error, d_path, smoothness}`` at every validation, and by data kind
    ``val/{lpips_path, lpips_diversity}`` (images), ``val/{sw,energy}_{1,2}step`` (low-dimensional
    data), ``val/{path_error, end_error, one_step_error_truth}`` (trajectory tasks with a truth: fresh
    starts of known dynamics, or the held-out trajectories of a file; a warning says when there is
    none). Definitions: docs/metrics.md. Computed like FID: after the first validation batch, with
    the EMA weights (ValidationMetric), samples in seeded blocks split across ranks, equal on every
    rank.

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
        super().__init__()
        self.settings = EvaluationSettings(num_samples, steps, batch_size, seed, distance_samples, timing_repeats=0)
        self.use_lpips, self.lpips_weights_path = lpips, lpips_weights_path
        self.lpips = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        kind, note = truth_protocol(trainer.datamodule)
        if kind is None and note is not None:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"PathMetrics: val/path_error, val/end_error and val/one_step_error_truth {note}")
        if stage in ("fit", "validate") and self.use_lpips and hasattr(trainer.datamodule, "reference_set"):
            from mmf_lightning.metrics.lpips import LPIPS

            self.lpips = LPIPS(self.lpips_weights_path)  # fails now if the weights are missing

    def measure_validation(self, trainer, pl_module, ranks: Ranks) -> dict[str, float]:
        lpips = self.lpips.to(pl_module.device) if self.lpips is not None else None
        return evaluate_model(pl_module, trainer.datamodule, self.settings, ranks, lpips)
