"""The LightningModule: a velocity network trained by an objective. Thin glue; the math is in
``mmf_lightning.objectives`` and ``mmf_lightning.nets``."""

import inspect
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from mmf_lightning import sampling
from mmf_lightning.nets.compiled import CompiledNet
from mmf_lightning.objectives import Objective
from mmf_lightning.objectives.time_sampling import check_times
from mmf_lightning.sources import Source, StandardNormal
from mmf_lightning.training.batches import batch_dict, unpack_batch
from mmf_lightning.training.checks import check_lambda_scheduler, check_net_and_data
from mmf_lightning.training.optim import lr_factor, make_optimizer
from mmf_lightning.training.reporting import LossWindow, report_batch_and_lr
from mmf_lightning.training.rng_state import gather_rng, rank_seed, restore_rng
from mmf_lightning.training.sharding import FSDPModule, check_sharding, fully_shard, sharded_blocks
from mmf_lightning.training.skip_guard import SkipGuard
from mmf_lightning.training.warm_start import load_initial_weights
from mmf_lightning.utils.config import check_count, init_config

try:  # set by LightningCLI while it builds the module; absent when built in Python
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
except ImportError:  # pragma: no cover
    _given_hyperparameters = None

_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


# validation and test losses draw their times and noise from this seed (plus the batch and rank)
_EVAL_SEED = 1_234_567


class MeanFlowModule(L.LightningModule):
    """Trains ``net`` (an average-velocity network u(z, r, t[, y])) with ``objective``.

    Args:
        net: the velocity network (``mmf_lightning.nets``).
        objective: the training objective (``mmf_lightning.objectives``); lambda, when the
            objective uses it, is set every step by the ``LambdaScheduler`` callback.
        lr, betas, weight_decay: Adam (AdamW when weight_decay > 0).
        lr_warmup_steps: linear learning-rate warmup from 0.
        lr_decay: "cosine" (to ``min_lr`` at the last step, as in the paper) or "constant".
        loss_var_window: number of recent steps over which ``train/loss_var`` is computed.
        max_skipped_in_a_row: an optimizer step whose loss (on any rank) or gradient is not finite
            is skipped: no optimizer or EMA update, counted in ``train/skipped_steps``; more skipped
            steps in a row than this stop the run with an error (0: the first one does).
        skip_check_every_n_steps: how often the host reads the skip counters (a sync): default
            every step on the CPU, every 50 on accelerators, where the skip itself happens on the
            device (fused Adam's ``found_inf``), so a run pays no sync per step.
        compile: run the training step's network calls (its forward and JVP) through ``torch.compile``
            (``nets.compiled.CompiledNet``): the same losses and weights, faster on large networks after a
            compilation of a minute or more at the first steps (docs/benchmarks.md). Sampling, validation
            and checkpoints use the network as it is.
        source: the distribution of e at t = 1 (``mmf_lightning.sources``; default N(0, I)),
            used when a batch brings no e of its own, and by ``sample``.
        init_from: start the network from these weights when a fit begins (not when it resumes): a checkpoint
            of ours (a flow-matching run's u(z, t, t) is already the instantaneous velocity, so its weights
            carry over as they are) or a file holding a state dict (``warm_start.initial_state``).
        init_key_map: ``{old prefix: new prefix}`` renaming the keys of ``init_from`` (e.g. ``{"module.": ""}``).
        shard: shard the network's parameters, gradients and optimizer state over the data-parallel ranks with
            FSDP2 (``torch.distributed.fsdp.fully_shard``, each block and then the whole net), under Lightning's
            ``ModelParallelStrategy``. du/dt then comes from ``torch.func.jvp`` through the sharded forward (or the
            finite difference); docs/launch.md has the recipe and what it leaves out.
    """

    def __init__(
        self,
        net: nn.Module,
        objective: Objective,
        lr: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        lr_decay: Literal["cosine", "constant"] = "cosine",
        min_lr: float = 0.0,
        loss_var_window: int = 100,
        source: Source | None = None,
        max_skipped_in_a_row: int = 10,
        skip_check_every_n_steps: int | None = None,
        compile: bool = False,
        init_from: str | None = None,
        init_key_map: dict[str, str] | None = None,
        shard: bool = False,
    ):
        super().__init__()
        if not (math.isfinite(lr) and math.isfinite(min_lr)) or lr <= 0 or min_lr < 0 or min_lr > lr:
            raise ValueError(
                f"need lr > 0 and 0 <= min_lr <= lr, got lr={lr}, min_lr={min_lr}; set model.lr and model.min_lr"
            )
        if lr_decay not in ("cosine", "constant"):
            raise ValueError(f"lr_decay must be 'cosine' or 'constant', got {lr_decay!r}")
        lr_warmup_steps = check_count("lr_warmup_steps", lr_warmup_steps)
        loss_var_window = check_count("loss_var_window", loss_var_window, 2)
        max_skipped_in_a_row = check_count("max_skipped_in_a_row", max_skipped_in_a_row)
        if skip_check_every_n_steps is not None:
            check_count("skip_check_every_n_steps", skip_check_every_n_steps, 1)
        self.source = source if source is not None else StandardNormal()
        self._save_hparams(net, objective, self.source)
        self.net = net
        self.objective = objective
        self.lam = 0.0
        self._loss_window = LossWindow(maxlen=loss_var_window)  # one mean loss per optimizer step
        self._step_losses: list[torch.Tensor] = []  # the micro-batch losses of the step under way
        self._steps_seen = 0
        self.guard = SkipGuard(max_skipped_in_a_row)
        self.last_step_kept: torch.Tensor | None = None  # bool on the device: False if the last step was skipped
        self.last_step_loss: torch.Tensor | None = None  # set before each optimizer step
        self.last_grad_norm: torch.Tensor | None = None
        self._rng_to_restore: dict | None = None  # a resumed fit's random streams, set at train start
        self._compiled_net: CompiledNet | None = None  # built at the first training step (``compile``)
        # sampling-time classifier-free guidance for sample / trajectory_from / data_predictions (and so for
        # `sample --guidance_scale`, `evaluate --guidance_scale`, the callbacks): 1 is none
        self.guidance_scale = 1.0
        self.init_from, self.init_key_map = init_from, init_key_map
        self._resumed = False  # set when a checkpoint is loaded into this module

    def _save_hparams(self, net: nn.Module, objective: Objective, source: Source) -> None:
        from_cli = _given_hyperparameters is not None and _given_hyperparameters.get() is not None
        if from_cli:
            self.save_hyperparameters()
            return
        self.save_hyperparameters(ignore=["net", "objective", "source"], frame=inspect.currentframe().f_back)
        configs = {"net": init_config(net), "objective": init_config(objective), "source": init_config(source)}
        if all(c is not None for c in configs.values()):
            self.hparams.update(**configs, _instantiator=_INSTANTIATOR)

    # -- public API used by notebooks --------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint`` (``weights_only``: never unpickles code); the EMA
        weights when the run used EMA. A missing, truncated or foreign file raises ``CheckpointError``
        naming it."""
        from mmf_lightning.training.checkpoints import check_exists, checkpoint_error, is_unreadable

        if isinstance(checkpoint_path, (str, os.PathLike)):  # (a file object is Lightning's to read)
            check_exists(checkpoint_path)
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except Exception as err:
            if not is_unreadable(err):
                raise
            raise checkpoint_error(checkpoint_path, err) from err

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.net.data_shape)

    def forward(self, z, r, t, y=None):
        return self.net(z, r, t, y)

    def average_velocity(self, z, r, t, y=None) -> torch.Tensor:
        """The network's u(z, r, t): z (B, *data_shape), r and t (B,) or scalars."""
        r, t = (torch.as_tensor(s, dtype=z.dtype, device=z.device).expand(z.shape[0]) for s in (r, t))
        check_times(r, t)
        return self.net(z, r, t, y)

    def sample_trajectory(self, num_samples: int, steps: int = 1, y=None, generator=None) -> torch.Tensor:
        """Every state z_{t_k} on the grid t_k = t_max (1 - k / steps): (steps + 1, N, *data_shape).

        Starts from e ~ ``source`` and applies the objective's jump (for MeanFlow objectives
        z_r = z_t - (t - r) u(z_t, r, t), t_max = 1); the last state is the sample. All randomness
        (starts, labels, re-noising) comes from ``generator``.
        """
        e, y = self.draw_starts(num_samples, y, generator)
        return self.trajectory_from(e, steps, y, generator)

    def draw_starts(self, num_samples: int, y=None, generator=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Starts e ~ ``source`` (N, *data_shape) and, for a class-conditional net, labels (N,):
        ``y`` expanded, or uniformly random classes drawn after e from the same generator."""
        if num_samples < 1:
            raise ValueError(f"need num_samples >= 1, got {num_samples}")
        e = self.source.sample(num_samples, self.data_shape, generator, self.device).to(self.device)
        return e, sampling.sample_labels(self.net, num_samples, y, generator, self.device)

    def trajectory_from(self, e: torch.Tensor, steps: int = 1, y=None, generator=None) -> torch.Tensor:
        """The states from given starts e (N, *data_shape): (steps + 1, N, *data_shape)
        (``sampling.trajectory``). ``y``: labels for a class-conditional net (None draws none:
        pass them explicitly); ``generator``: for objectives whose jumps draw noise."""
        with self.net_in_eval_mode():
            return sampling.trajectory(self._sampling_net(), self.objective, e.to(self.device), steps, y, generator)

    def data_predictions(self, trajectory: torch.Tensor, y=None) -> torch.Tensor:
        """One jump from each state of a K-step trajectory straight to t = 0 (``sampling.data_predictions``)."""
        with self.net_in_eval_mode():
            return sampling.data_predictions(self._sampling_net(), self.objective, trajectory.to(self.device), y)

    @contextmanager
    def net_in_eval_mode(self):
        was_training = self.net.training
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(was_training)

    def sample(self, num_samples: int, steps: int = 1, y=None, generator=None) -> torch.Tensor:
        """``num_samples`` samples from ``steps`` jumps: (N, *data_shape). One step: x = e - u(e, 0, 1).
        The last state of ``sample_trajectory`` (the same draws), without keeping the others."""
        e, y = self.draw_starts(num_samples, y, generator)
        with self.net_in_eval_mode():
            return sampling.sample(self._sampling_net(), self.objective, e, steps, y, generator)

    def _sampling_net(self) -> nn.Module:
        """The net, with classifier-free guidance at ``guidance_scale`` (``sampling.ClassifierFreeGuidance``)."""
        return sampling.guided(self.net, self.guidance_scale)

    # -- training ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        check_net_and_data(self.net, self.objective, self.source, self._trainer)

    def configure_model(self) -> None:
        """With ``shard``, in a fit: FSDP2 over the strategy's data-parallel mesh (``ModelParallelStrategy``). A
        sharded run's checkpoint (``save_distributed_checkpoint=False``) loads unsharded anywhere else."""
        if not self.hparams.get("shard") or self._trainer is None or isinstance(self.net, FSDPModule):
            return
        check_sharding(self.trainer, self.objective, shard=True)
        self.objective.same_calls_on_every_rank = True  # the ranks' calls gather weights: the same calls on each
        mesh = self.device_mesh["data_parallel"]
        for block in sharded_blocks(self.net):
            fully_shard(block, mesh=mesh)
        fully_shard(self.net, mesh=mesh)
        rank_zero_info(f"sharded the network over {mesh.size()} data-parallel ranks (FSDP2)")

    def on_fit_start(self) -> None:
        check_sharding(self.trainer, self.objective, shard=bool(self.hparams.get("shard")))
        # after a resumed fit's checkpoint was read (which sets _resumed): that one keeps its own weights, and
        # needs the init_from file no more
        if self.init_from and not self._resumed:
            loaded = load_initial_weights(self.net, self.init_from, self.init_key_map)
            rank_zero_info(f"started the network from {self.init_from} ({loaded} tensors)")
        if self.trainer.world_size > 1:  # every rank would otherwise draw the same noise and times
            torch.manual_seed(rank_seed(torch.initial_seed(), self.global_rank))
        check_lambda_scheduler(self.trainer, self.objective)
        report_batch_and_lr(self.trainer, self.hparams.lr)

    def _labels(self, b: dict) -> torch.Tensor | None:
        """Labels go to class-conditional nets only; an unconditional net ignores them."""
        return b["y"] if getattr(self.net, "num_classes", None) else None

    def _loss(self, batch, net: nn.Module | CompiledNet | None = None):
        b = unpack_batch(batch)
        if b["e"] is None and b["path"] is None:
            x = b["x"]
            b["e"] = self.source.sample(x.shape[0], x.shape[1:], device=x.device).to(x.dtype)
        out = self.objective(
            self.net if net is None else net,
            b["x"],
            self._labels(b),
            lam=self.lam,
            step=self.global_step,
            e=b["e"],
            path=b["path"],
        )
        return b["x"], out

    def _training_net(self) -> nn.Module | CompiledNet:
        if not self.hparams.get("compile"):
            return self.net
        if self._compiled_net is None or self._compiled_net.net is not self.net:
            self._compiled_net = CompiledNet(self.net)
        return self._compiled_net

    def training_step(self, batch, batch_idx):
        x, out = self._loss(batch, self._training_net())
        loss = out.loss
        # One all-reduce gives the loss summed over ranks and the number of ranks whose loss is not
        # finite, so every rank takes the same decision: a rank that stopped alone would leave the
        # others waiting in backward's all-reduce until the collective times out.
        # The flag stays on the device: the step is skipped there (on_before_optimizer_step).
        world = self.trainer.world_size if self._trainer is not None else 1
        totals = self._sum_over_ranks(torch.stack([loss.detach().float(), (~torch.isfinite(loss)).float()]))
        self.guard.loss_not_finite(totals[1] > 0)
        self._step_losses.append(totals[0] / world)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mse", out.per_sample.mean() / x[0].numel())
        for key, value in out.stats.items():
            self.log(f"train/{key}", value.float())
        return loss

    def _sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(values, reduce_op="sum") if self._trainer is not None else values

    def on_train_start(self) -> None:
        self._steps_seen = self.global_step
        if self._rng_to_restore is not None:  # a resumed fit: the random streams go on
            restore_rng(self._rng_to_restore, self.global_rank, self.trainer.world_size)
            self._rng_to_restore = None

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Once per optimizer step, whatever the gradient accumulation (``global_step`` moves only
        when the optimizer stepped): the objective's target network moves, and the step's loss
        (the mean over its micro-batches and ranks) joins the loss-variance window."""
        if self.global_step == self._steps_seen:
            return
        self._steps_seen = self.global_step
        self.objective.on_optimizer_step(self.net, self.global_step)
        self._loss_window.append(self.last_step_loss)  # set before the optimizer step; on the device: no sync
        self._step_losses.clear()
        variance = self.loss_variance()
        if variance is not None:
            self.log("train/loss_var", variance)
        self.log("train/skipped_steps", self.guard.skipped)
        every = self.hparams.get("skip_check_every_n_steps") or (1 if self.device.type == "cpu" else 50)
        if self.global_step % every == 0:
            self.guard.check(self.global_step, self.lam, self.trainer)

    def loss_variance(self) -> torch.Tensor | None:
        """Unbiased variance of the last ``loss_var_window`` training losses (one per optimizer step, None before
        two steps): the paper's training-stability measure. Checkpoints keep the window, so a reloaded module
        still has it."""
        return self._loss_window.variance()

    def on_before_optimizer_step(self, optimizer) -> None:
        """The total gradient 2-norm, before any clipping; a step whose loss or gradient is not
        finite is skipped (``SkipGuard``)."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        if grads:
            self.log("train/grad_norm", norm)
        self.last_step_kept = self.guard.skip_if_not_finite(optimizer, norm)
        # what the step is judged by (callbacks.SpikeRollback): its loss (the mean over its micro-batches and
        # ranks) and gradient norm, both the same on every rank, on the device
        self.last_step_loss, self.last_grad_norm = torch.stack(self._step_losses).mean(), norm.detach()

    def _eval_loss(self, batch, batch_idx: int, stage: str) -> torch.Tensor:
        # The JVP layers' custom rules save their inputs, which inference tensors cannot be
        # (Lightning evaluates under inference_mode): evaluate on normal copies, without grad.
        # The loss draws times and noise: from a generator forked off torch's and seeded by the
        # batch, so the value is reproducible and validation leaves training's random stream alone.
        cuda = self.device.type == "cuda"
        with (
            torch.inference_mode(False),
            torch.no_grad(),
            torch.random.fork_rng(devices=[self.device] if cuda else [], device_type="cuda" if cuda else "cpu"),
        ):
            torch.manual_seed(_EVAL_SEED + 1_000_003 * self.global_rank + batch_idx)
            batch = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch_dict(batch).items()}
            _, out = self._loss(batch)
        self.log(f"{stage}/loss", out.loss, sync_dist=True)
        return out.loss

    def validation_step(self, batch, batch_idx):
        return self._eval_loss(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        return self._eval_loss(batch, batch_idx, "test")

    def predict_step(self, batch, batch_idx):
        """One-step samples, as many as the batch has rows (with its labels for conditional nets)."""
        b = unpack_batch(batch)
        return self.sample(b["x"].shape[0], steps=1, y=self._labels(b))

    def configure_optimizers(self):
        hp = self.hparams
        scaled = self._trainer is not None and str(self.trainer.precision) == "16-mixed"
        optimizer = make_optimizer(self.net.parameters(), hp.lr, hp.betas, hp.weight_decay, loss_scaled=scaled)
        factor = self.lr_factor(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_factor(self, total_steps: int):
        """``step -> factor`` of ``lr`` in a run of ``total_steps``: ``optim.lr_factor`` with this module's settings."""
        hp = self.hparams
        return lr_factor(total_steps, hp.lr_warmup_steps, hp.lr_decay, hp.min_lr / hp.lr)

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mmf_lightning"] = {
            "lambda": self.lam,
            "objective": self.objective.state_dict(),
            "loss_window": [float(v) for v in self._loss_window],  # `evaluate` reports its variance
            "skip_guard": self.guard.state_dict(),
        }
        if self._trainer is not None and self.trainer.state.fn == "fit":  # every rank's random streams
            checkpoint["mmf_lightning"]["rng"] = gather_rng(self.trainer.strategy)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed = True
        state = checkpoint.get("mmf_lightning", {})
        self.lam = float(state.get("lambda", 0.0))
        self.objective.load_state_dict(state.get("objective", {}))
        self._loss_window.clear()  # a resumed run continues its window
        self._loss_window.extend(torch.tensor(v) for v in state.get("loss_window", []))
        self.guard.load_state_dict(state.get("skip_guard", {}))
        # only a resumed fit takes the random streams back (at train start, after Lightning's seeding);
        # load_from_checkpoint in a notebook leaves the caller's generator alone
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        self._rng_to_restore = state.get("rng") if fitting else None
