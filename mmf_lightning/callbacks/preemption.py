"""A preempted run saves where it is and exits cleanly.

On SIGTERM (what schedulers send before killing a job: SLURM at preemption or time limit with
``--signal=TERM@<s>``, Kubernetes, ``kill``) Lightning finishes the optimizer step under way and
raises ``SIGTERMException`` on every rank; this callback then saves ``last.ckpt`` in the run's
checkpoint folder, so ``fit --ckpt_path last`` in the same run folder continues from that step
(docs/launch.md: requeued jobs). Any other exception saves nothing: a diverged or crashed run
keeps its last good checkpoint.
"""

import os
import signal
import sys
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mmf_lightning.training.run_dir import run_dir


class SaveOnPreemption(L.Callback):
    """Added to every ``fit`` by the CLI. ``last_path``: where it saved, after a SIGTERM or a Ctrl-C.

    - SIGTERM (a scheduler's preemption) and the first Ctrl-C stop the run after the step under way and save
      ``last.ckpt``; a second Ctrl-C stops at once, saving nothing.
    - Lightning stops after the batch under way; with gradient accumulation that may be half an optimizer step, whose
      gradient a checkpoint cannot hold. So a SIGTERM that lands while a step's micro-batches are under way is held
      (this callback wraps Lightning's handler) until the step's last micro-batch has gone through the optimizer.
    - Every stop that leaves a resumable run (these, a divergence stop, an exception mid-run) prints
      ``resume_command`` (the CLI's: the same command with ``--ckpt_path last``).
    """

    def __init__(self, resume_command: str | None = None):
        self.last_path: Path | None = None
        self.resume_command = resume_command
        self._lightning_handler = None
        self._trainer = None
        self._mid_step = False  # a SIGTERM now would stop the run inside an optimizer step
        self._held: tuple | None = None
        self._interrupted = False

    def on_train_start(self, trainer, pl_module) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler) or threading.current_thread() is not threading.main_thread():
            return
        self._lightning_handler, self._trainer = handler, trainer
        signal.signal(signal.SIGTERM, self._on_sigterm)  # Lightning restores the originals at teardown
        signal.signal(signal.SIGINT, self._on_interrupt)
        requeue = getattr(signal, "SIGUSR1", None)  # SLURM's requeue signal, when Lightning's SLURM plugin handles it
        if requeue is not None and os.environ.get("SLURM_JOB_ID") and callable(signal.getsignal(requeue)):
            self._slurm_handler = signal.getsignal(requeue)
            signal.signal(requeue, self._on_requeue)

    def _on_requeue(self, signum, frame) -> None:
        self._slurm_handler(signum, frame)  # Lightning's: saves hpc_ckpt_<n>.ckpt and asks SLURM to requeue the job
        trainer = self._trainer
        rank_zero_info(
            f"SLURM requeue at step {trainer.global_step}: Lightning saved hpc_ckpt_*.ckpt in "
            f"{trainer.default_root_dir}, from which the requeued job (the same command) resumes by itself"
        )

    def on_train_end(self, trainer, pl_module) -> None:
        if self._lightning_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _on_sigterm(self, signum, frame) -> None:
        if self._mid_step:
            self._held = (signum, frame)
        else:
            self._stop(signum, frame)

    def _stop(self, signum, frame) -> None:
        """Lightning's SIGTERM flag, read at the end of the batch: its handler for a SIGTERM (which also tells the
        other processes of a launcher), the flag alone for a Ctrl-C (which the terminal sends to every process)."""
        if self._interrupted:
            self._trainer._signal_connector.received_sigterm = True
        else:
            self._lightning_handler(signum, frame)

    def _on_interrupt(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        self._interrupted = True
        print(
            "\nCtrl-C: stopping after the step under way and saving last.ckpt (Ctrl-C again stops at once, unsaved)",
            file=sys.stderr,
            flush=True,
        )
        self._on_sigterm(signal.SIGTERM, frame)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        accumulate = trainer.accumulate_grad_batches
        steps_after = (batch_idx + 1) % accumulate == 0 or batch_idx + 1 == trainer.num_training_batches
        self._mid_step = not steps_after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._mid_step or self._held is None:
            return
        rank_zero_info("SIGTERM between the micro-batches of an optimizer step: stopping now that the step is done")
        held, self._held = self._held, None
        self._stop(*held)  # Lightning sees its flag right after this hook

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return
        if isinstance(exception, SIGTERMException):
            self._save(trainer, "Ctrl-C" if self._interrupted else "SIGTERM")
        else:  # a crash, a divergence stop or a second Ctrl-C: nothing new is saved, the last checkpoint stays
            checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or None
            if checkpoint and Path(checkpoint).is_file():
                kind = type(exception).__name__
                self._say(f"stopped at step {trainer.global_step} ({kind}); its last checkpoint {checkpoint} is intact")

    def _save(self, trainer, what: str) -> None:
        if trainer.validating or trainer.sanity_checking:  # the EMA weights are swapped in: not a state to resume
            rank_zero_info(f"{what} during validation at step {trainer.global_step}: no checkpoint saved")
            return
        checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        folder = Path(checkpoint.dirpath) if checkpoint is not None and checkpoint.dirpath else None
        folder = folder or run_dir(trainer) / "checkpoints"  # (run_dir is a collective: every rank gets here)
        name = (checkpoint.CHECKPOINT_NAME_LAST if checkpoint is not None else "last") + ".ckpt"
        self.last_path = folder / name
        trainer.save_checkpoint(self.last_path, weights_only=False)  # a collective too; rank 0 writes
        self._say(f"{what} at step {trainer.global_step}: saved {self.last_path}")

    def _say(self, what: str) -> None:
        how = f"resume with: {self.resume_command}" if self.resume_command else "fit with --ckpt_path <it> resumes"
        rank_zero_info(f"{what}; {how}")
