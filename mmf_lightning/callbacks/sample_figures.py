"""Pictures of samples from the EMA weights, during and at the end of training."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from mmf_lightning.data.base import reference_points
from mmf_lightning.figures import save_samples_figure
from mmf_lightning.training.run_dir import run_dir
from mmf_lightning.utils.config import check_count


def ema_module(trainer: L.Trainer, pl_module: L.LightningModule) -> L.LightningModule:
    """The EMA copy of the module when a WeightAveraging callback keeps one, else the module.

    Only valid outside validation (WeightAveraging swaps weights in place during validation).
    """
    for cb in trainer.callbacks:
        if isinstance(cb, WeightAveraging) and getattr(cb, "_average_model", None) is not None:
            return cb._average_model.module
    return pl_module


class SampleFigures(L.Callback):
    """Saves ``<run folder>/samples/step_<k>.png`` (``runs.run_dir``), samples for each entry of
    ``steps`` (a grid of 64 for images, a scatter over the data for 2-D points, and for trajectory
    tasks the model's paths against the ground truth), and logs it to W&B or TensorBoard when the
    run has them.

    Args:
        num_samples: samples per panel (images: at most 64 are drawn).
        steps: numbers of sampling steps to show, e.g. [1, 2].
        every_n_steps: also draw during training every n optimizer steps (0: not by step count).
        at_validation: also draw after every validation (not the sanity check).
        num_trajectories: paths in the trajectory panel (trajectory tasks with a ground truth).
        seed: fixed noise, so successive figures show the same samples evolving.
        euler_steps: a panel of the same run's multi-step flow matching beside the one-step samples: ``euler_steps``
            Euler steps along its instantaneous velocity u(z, t, t), from the same noise (0: none).
    A figure is drawn at the end of training in any case. For images it starts with a panel of the data.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        steps: tuple[int, ...] = (1, 2),
        every_n_steps: int = 0,
        at_validation: bool = True,
        num_trajectories: int = 12,
        seed: int = 0,
        euler_steps: int = 16,
    ):
        if num_samples < 1 or not steps or min(steps) < 1 or every_n_steps < 0 or num_trajectories < 0:
            raise ValueError(
                f"SampleFigures needs num_samples >= 1, steps >= 1, every_n_steps >= 0, num_trajectories >= 0; "
                f"got {num_samples}, {list(steps)}, {every_n_steps}, {num_trajectories}"
            )
        self.num_samples, self.steps, self.every_n_steps, self.seed = num_samples, tuple(steps), every_n_steps, seed
        self.at_validation, self.num_trajectories = at_validation, num_trajectories
        self.euler_steps = check_count("SampleFigures euler_steps", euler_steps)
        self.last_path: Path | None = None
        self._drawn_at: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        # after WeightAveraging has swapped the training weights back, so ema_module is the EMA copy
        if self.at_validation and not trainer.sanity_checking and trainer.state.fn == "fit":
            if trainer.global_step != self._drawn_at:
                self.draw(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # once per n optimizer steps: global_step moves only when the optimizer stepped, so under
        # gradient accumulation the micro-batches of one step draw once, and step 0 never
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._drawn_at:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._drawn_at:
            self.draw(trainer, pl_module)

    def draw(self, trainer, pl_module) -> None:
        self._drawn_at = trainer.global_step  # on every rank: they all take the same decisions
        out_dir = run_dir(trainer) / "samples"  # a collective: on every rank
        if not trainer.is_global_zero:
            return
        module = ema_module(trainer, pl_module)
        n = min(self.num_samples, 64) if len(module.data_shape) == 3 else self.num_samples
        panels = {}
        for k in self.steps:
            generator = torch.Generator().manual_seed(self.seed)
            title = f"{k}-step samples (step {trainer.global_step})"
            panels[title] = module.sample(n, k, generator=generator)
        if self.euler_steps:  # multi-step flow matching of the same net: what one step is to be judged against
            panels[f"{self.euler_steps} Euler steps of u(z, t, t)"] = euler_samples(
                module, n, self.euler_steps, self.seed
            )
        decode = getattr(trainer.datamodule, "decode", None)  # latent-space data: the pictures show images
        panels = {title: decode(x) if decode else x for title, x in panels.items()}
        if len(module.data_shape) == 3:
            images = _data_images(trainer, n)
            panels = {"data": images, **panels} if images is not None else panels
        reference = reference_points(trainer.datamodule, self.num_samples)
        trajectories = self._trajectories(trainer, module)
        path = out_dir / f"step_{trainer.global_step}.png"
        self.last_path = save_samples_figure(panels, path, reference, trajectories)
        log_picture(trainer, "samples", self.last_path)

    @torch.no_grad()
    def _trajectories(self, trainer, module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(truth, the model's paths from the truth's starts), both (K + 1, N, 2), for trajectory
        tasks with a ground truth (``metrics.evaluation.truth_protocol``); else None."""
        from mmf_lightning.metrics.evaluation import truth_paths

        truth = truth_paths(trainer.datamodule, self.num_trajectories, self.seed) if self.num_trajectories else None
        if truth is None:
            return None
        predicted = module.trajectory_from(truth[0].to(module.device), truth.shape[0] - 1).cpu()
        return truth[..., :2], predicted[..., :2]


@torch.no_grad()
def euler_samples(module, n: int, steps: int, seed: int) -> torch.Tensor:
    """``steps`` Euler steps of the module's instantaneous velocity u(z, t, t) (its net read as a flow-matching
    one), from the noise ``module.sample`` starts from with ``seed``."""
    from mmf_lightning import sampling
    from mmf_lightning.objectives import FlowMatching

    e, y = module.draw_starts(n, None, torch.Generator().manual_seed(seed))
    with module.net_in_eval_mode():
        return sampling.sample(module.net, FlowMatching(), e, steps, y)


def _data_images(trainer, n: int) -> torch.Tensor | None:
    """The first n images of the datamodule's reference set (the data, as the samples are judged against)."""
    reference = getattr(trainer.datamodule, "reference_set", None)
    if not callable(reference):
        return None
    dataset = reference("train")
    return torch.stack([dataset[i]["x"] for i in range(min(n, len(dataset)))])


def log_picture(trainer, key: str, path: Path) -> None:
    """A saved picture into the loggers that keep images (W&B, TensorBoard), at the current step."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            import matplotlib.image

            pixels = matplotlib.image.imread(path)[..., :3]  # (H, W, RGB) floats in [0, 1]
            logger.experiment.add_image(key, pixels, trainer.global_step, dataformats="HWC")
