"""Rolling a run back past a loss or gradient spike: restore the last good weights, EMA and optimizer state,
then go on with a lower learning rate (or lambda). Non-finite steps are the skip guard's (``skip_guard``);
this catches the finite jumps that precede a divergence."""

import copy
import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from mmf_lightning.callbacks.lambda_schedule import LambdaScheduler


def _clone(state):
    """A deep copy with every tensor cloned (on its own device): a snapshot that later steps cannot move."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _clone(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_clone(v) for v in state)
    return copy.deepcopy(state)


class _RunningStats:
    """Exponential moving mean and variance of a scalar, with bias correction."""

    def __init__(self, beta: float):
        self.beta, self.count, self.mean, self.var = beta, 0, 0.0, 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += (1 - self.beta) * delta
        self.var = self.beta * (self.var + (1 - self.beta) * delta * delta)

    def bound(self, threshold: float, min_ratio: float) -> float:
        """The value above which a new one is a spike: mean + threshold std, and at least min_ratio x mean."""
        correction = 1 - self.beta**self.count
        mean, std = self.mean / correction, math.sqrt(max(self.var / correction, 0.0))
        return max(mean + threshold * std, min_ratio * mean)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.var = int(state["count"]), float(state["mean"]), float(state["var"])


class SpikeRollback(L.Callback):
    """Watches each optimizer step's loss and gradient norm (``MeanFlowModule.last_step_loss``, ``last_grad_norm``:
    the same on every rank). A step whose value exceeds ``mean + threshold * std`` of its running statistics (and
    ``min_ratio`` times the mean) is a spike: the network, its optimizer state and the EMA weights go back to the
    last snapshot whose step was judged good, the learning rate is multiplied by ``lr_factor`` and lambda by
    ``lambda_factor`` from then on, and the event is logged (``train/rollbacks``, with a warning naming the step
    and the values). Snapshots are kept in memory every ``every_n_steps`` steps (no disk I/O): the network and
    EMA state, and the optimizer's moments, about 3x the weights' memory. The step counter and the schedules go
    on: a rollback undoes weights, not time. Reading the two values costs one host sync per step.

    Args:
        threshold: in running standard deviations.
        min_ratio: a spike must also exceed this multiple of the running mean (small noise on a flat loss
            is not one).
        every_n_steps: how often a snapshot is taken.
        warmup_steps: steps of statistics before any judging (the loss falls fast early on).
        beta: the running statistics' decay per step.
        lr_factor, lambda_factor: applied at each rollback (1 leaves them).
        max_rollbacks: more than this many stop the run with an error: it is not recovering.
        watch: "loss", "grad_norm" or "both".
    """

    def __init__(
        self,
        threshold: float = 6.0,
        min_ratio: float = 2.0,
        every_n_steps: int = 100,
        warmup_steps: int = 200,
        beta: float = 0.99,
        lr_factor: float = 0.5,
        lambda_factor: float = 1.0,
        max_rollbacks: int = 5,
        watch: str = "both",
    ):
        if not (threshold > 0 and min_ratio >= 1 and 0 < beta < 1 and 0 < lr_factor <= 1 and 0 <= lambda_factor <= 1):
            raise ValueError(
                "SpikeRollback needs threshold > 0, min_ratio >= 1, 0 < beta < 1, 0 < lr_factor <= 1 and "
                f"0 <= lambda_factor <= 1; got {threshold}, {min_ratio}, {beta}, {lr_factor}, {lambda_factor}"
            )
        if every_n_steps < 1 or warmup_steps < 0 or max_rollbacks < 0:
            raise ValueError(
                f"SpikeRollback needs every_n_steps >= 1, warmup_steps >= 0, max_rollbacks >= 0; got "
                f"{every_n_steps}, {warmup_steps}, {max_rollbacks}"
            )
        if watch not in ("loss", "grad_norm", "both"):
            raise ValueError(f"watch must be 'loss', 'grad_norm' or 'both', got {watch!r}")
        self.threshold, self.min_ratio, self.every_n_steps = threshold, min_ratio, every_n_steps
        self.warmup_steps, self.lr_factor, self.lambda_factor = warmup_steps, lr_factor, lambda_factor
        self.max_rollbacks, self.watch = max_rollbacks, watch
        self.stats = {name: _RunningStats(beta) for name in ("loss", "grad_norm")}
        self.rollbacks = 0
        self.events: list[dict] = []  # one per rollback: step, the values, the snapshot's step
        self._good: dict | None = None  # the last snapshot whose step was judged good
        self._pending: dict | None = None  # taken before a step; good once that step is
        self._seen_step = -1

    # -- snapshots -------------------------------------------------------------------------------
    def _snapshot(self, trainer, pl_module) -> dict:
        return {
            "step": trainer.global_step,
            "module": _clone(pl_module.state_dict()),
            "optimizers": [_clone(opt.state_dict()) for opt in trainer.optimizers],
            "ema": [_clone(cb._average_model.state_dict()) for cb in self._ema_callbacks(trainer)],
        }

    @staticmethod
    def _ema_callbacks(trainer) -> list:
        return [cb for cb in trainer.callbacks if getattr(cb, "_average_model", None) is not None]

    def _restore(self, trainer, pl_module, snap: dict) -> None:
        pl_module.load_state_dict(snap["module"])
        for opt, state in zip(trainer.optimizers, snap["optimizers"]):
            opt.load_state_dict(_clone(state))
        for cb, state in zip(self._ema_callbacks(trainer), snap["ema"]):
            cb._average_model.load_state_dict(state)

    # -- the hooks -------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0 and self._pending is None:
            self._pending = self._snapshot(trainer, pl_module)  # the weights this step starts from

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._seen_step or pl_module.last_step_loss is None:  # no optimizer step since (accumulating)
            return
        self._seen_step = step
        values = {"loss": float(pl_module.last_step_loss), "grad_norm": float(pl_module.last_grad_norm)}
        spiked = {}  # name -> (value, bound)
        if step > self.warmup_steps and self._good is not None:
            for k in ("loss", "grad_norm") if self.watch == "both" else (self.watch,):
                bound = self.stats[k].bound(self.threshold, self.min_ratio)
                if math.isfinite(values[k]) and values[k] > bound:
                    spiked[k] = (values[k], bound)
        if spiked:
            self._roll_back(trainer, pl_module, step, spiked)
        else:
            for k, v in values.items():
                if math.isfinite(v):  # a skipped (non-finite) step is the skip guard's, and no statistic
                    self.stats[k].add(v)
            if self._pending is not None:  # the snapshot's step was fine: it is the one to go back to
                self._good, self._pending = self._pending, None
        pl_module.log("train/rollbacks", float(self.rollbacks))

    def _roll_back(self, trainer, pl_module, step: int, spiked: dict) -> None:
        self.rollbacks += 1
        what = "; ".join(f"{k} {v:.4g} over its bound {b:.4g}" for k, (v, b) in spiked.items())
        if self.rollbacks > self.max_rollbacks:
            raise RuntimeError(
                f"step {step}: {what}, after {self.max_rollbacks} rollbacks already: the run is not recovering. "
                "Lower model.lr, or raise SpikeRollback's threshold / max_rollbacks"
            )
        snap, self._pending = self._good, None
        self._restore(trainer, pl_module, snap)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] *= self.lr_factor
        for config in trainer.lr_scheduler_configs:  # the schedules go on from the lowered base
            config.scheduler.base_lrs = [lr * self.lr_factor for lr in config.scheduler.base_lrs]
        for cb in trainer.callbacks:
            if isinstance(cb, LambdaScheduler):
                cb.scale *= self.lambda_factor
        self.events.append({"step": step, "restored_step": snap["step"], **{k: v for k, (v, _) in spiked.items()}})
        rank_zero_warn(
            f"step {step}: a spike ({what}); restored the weights, optimizer state and EMA of step {snap['step']}, "
            f"learning rate x{self.lr_factor}" + (f", lambda x{self.lambda_factor}" if self.lambda_factor != 1 else "")
        )

    def state_dict(self) -> dict:
        return {
            "rollbacks": self.rollbacks,
            "events": self.events,
            "stats": {k: s.state_dict() for k, s in self.stats.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.rollbacks, self.events = int(state_dict["rollbacks"]), list(state_dict["events"])
        for k, s in state_dict["stats"].items():
            self.stats[k].load_state_dict(s)
