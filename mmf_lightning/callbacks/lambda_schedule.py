"""The callback that advances lambda, the gradient-modulation weight, every optimizer step."""

import lightning as L

from mmf_lightning.objectives.schedules import LambdaSchedule, LinearWarmup


class LambdaScheduler(L.Callback):
    """Sets ``pl_module.lam = schedule(step)`` before each training batch and logs it.

    ``step`` counts optimizer steps taken by this run (and the runs it resumed from: the
    count is saved in checkpoints, so a resumed curriculum continues where it stopped).

    Args:
        schedule: a ``mmf_lightning.objectives.schedules`` schedule; default is the
            paper's curriculum, eq. 12, with T_warmup = 100k.

    ``scale`` multiplies the schedule's value (1; ``SpikeRollback`` lowers it after a spike), and is saved.
    """

    def __init__(self, schedule: LambdaSchedule | None = None):
        self.schedule = schedule if schedule is not None else LinearWarmup(100_000)
        self.step = 0
        self.scale = 1.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.lam = self.scale * self.schedule(self.step)
        pl_module.log("train/lambda", pl_module.lam)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step, "scale": self.scale}

    def load_state_dict(self, state_dict: dict) -> None:
        self.step = int(state_dict["step"])
        self.scale = float(state_dict.get("scale", 1.0))
