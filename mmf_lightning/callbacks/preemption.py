"""A preempted run saves where it is and exits cleanly.

On SIGTERM (what schedulers send before killing a job: SLURM at preemption or time limit with
``--signal=TERM@<s>``, Kubernetes, ``kill``) Lightning finishes the optimizer step under way and
raises ``SIGTERMException`` on every rank; this callback then saves ``last.ckpt`` in the run's
checkpoint folder, so ``fit --ckpt_path last`` in the same run folder continues from that step
(docs/launch.md: requeued jobs). Any other exception saves nothing: a diverged or crashed run
keeps its last good checkpoint.
"""

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mmf_lightning.training.run_dir import run_dir


class SaveOnPreemption(L.Callback):
    """Added to every ``fit`` by the CLI. ``last_path``: where it saved, after a SIGTERM.

    Lightning stops after the batch under way; with gradient accumulation that may be half an optimizer step, whose
    gradient a checkpoint cannot hold. So a SIGTERM that lands while a step's micro-batches are under way is held
    (this callback wraps Lightning's handler) until the step's last micro-batch has gone through the optimizer, and
    the run stops there.
    """

    def __init__(self):
        self.last_path: Path | None = None
        self._lightning_handler = None
        self._mid_step = False  # a SIGTERM now would stop the run inside an optimizer step
        self._held: tuple | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if (
            trainer.accumulate_grad_batches > 1
            and callable(handler)
            and threading.current_thread() is threading.main_thread()
        ):
            self._lightning_handler = handler
            signal.signal(signal.SIGTERM, self._on_sigterm)  # Lightning restores the original at teardown

    def _on_sigterm(self, signum, frame) -> None:
        if self._mid_step:
            self._held = (signum, frame)
        else:
            self._lightning_handler(signum, frame)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        steps_after = (
            batch_idx + 1
        ) % trainer.accumulate_grad_batches == 0 or batch_idx + 1 == trainer.num_training_batches
        self._mid_step = not steps_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._mid_step or self._held is None:
            return
        rank_zero_info("SIGTERM between the micro-batches of an optimizer step: stopping now that the step is done")
        held, self._held = self._held, None
        self._lightning_handler(*held)  # Lightning sees its flag right after this hook

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
