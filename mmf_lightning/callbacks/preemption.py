"""A preempted run saves where it is and exits cleanly.

On SIGTERM (what schedulers send before killing a job: SLURM at preemption or time limit with
``--signal=TERM@<s>``, Kubernetes, ``kill``) Lightning finishes the optimizer step under way and
raises ``SIGTERMException`` on every rank; this callback then saves ``last.ckpt`` in the run's
checkpoint folder, so ``fit --ckpt_path last`` in the same run folder continues from that step
(docs/launch.md: requeued jobs). Any other exception saves nothing: a diverged or crashed run
keeps its last good checkpoint.
"""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mmf_lightning.runs import run_dir


class SaveOnPreemption(L.Callback):
    """Added to every ``fit`` by the CLI. ``last_path``: where it saved, after a SIGTERM."""

    def __init__(self):
        self.last_path: Path | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if trainer.validating or trainer.sanity_checking:  # the EMA weights are swapped in: not a state to resume
            rank_zero_info(f"SIGTERM during validation at step {trainer.global_step}: no checkpoint saved")
            return
        checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        folder = Path(checkpoint.dirpath) if checkpoint is not None and checkpoint.dirpath else None
        folder = folder or run_dir(trainer) / "checkpoints"  # (run_dir is a collective: every rank gets here)
        name = (checkpoint.CHECKPOINT_NAME_LAST if checkpoint is not None else "last") + ".ckpt"
        self.last_path = folder / name
        trainer.save_checkpoint(self.last_path)  # a collective too; rank 0 writes
        rank_zero_info(
            f"SIGTERM at step {trainer.global_step}: saved {self.last_path}; `fit --ckpt_path last` with the same "
            "run folder (logger version) continues from it"
        )
