"""Skipping optimizer steps whose loss or gradient is not finite, without a host sync per step
(``MeanFlowModule`` uses it; docs/launch.md "Preemption and divergence")."""

import torch


class SkipGuard:
    """Skips optimizer steps whose loss or gradient is not finite, without a host sync per step.

    The flags stay on the device: a fused Adam reads ``found_inf`` and leaves weights, moments and
    its step count alone (other optimizers: the grads are dropped, which costs one sync). The
    counters (skipped steps, and the longest run of them in a row since the last check) are read
    by the host only in ``check``, which stops the run after ``max_in_a_row`` skipped steps in a
    row. Every rank sees the same flags (the loss flag is summed over ranks, the gradient is
    all-reduced), so every rank takes the same decision.
    """

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self._loss_bad: torch.Tensor | None = None
        self.skipped = torch.zeros(())
        self._run = torch.zeros(())  # skipped steps in a row, up to now
        self._longest = torch.zeros(())  # the longest such run since the last check
        self._reported = 0

    def loss_not_finite(self, flag: torch.Tensor) -> None:
        """A micro-batch's flag (any rank); the step is skipped if any of its micro-batches had one."""
        self._loss_bad = flag if self._loss_bad is None else self._loss_bad | flag

    def skip_if_not_finite(self, optimizer, grad_norm: torch.Tensor) -> torch.Tensor:
        """Called before the optimizer step: skip it if needed. Returns the device flag "kept"."""
        bad = ~torch.isfinite(grad_norm)
        if self._loss_bad is not None:
            bad = bad | self._loss_bad.to(bad.device)
        self._loss_bad = None
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = bad.float()
        elif bad.item():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # Adam leaves a parameter without a gradient untouched
        self.skipped, self._run, self._longest = (t.to(bad.device) for t in (self.skipped, self._run, self._longest))
        self.skipped = self.skipped + bad
        self._run = (self._run + 1) * bad
        self._longest = torch.maximum(self._longest, self._run)
        return ~bad

    def check(self, step: int, lam: float, trainer=None) -> None:
        """Read the counters (a sync): warn of newly skipped steps; stop after too many in a row."""
        longest, skipped = int(self._longest), int(self.skipped)
        self._longest = self._run.clone()
        if longest > self.max_in_a_row:
            last = ""
            ckpt = getattr(getattr(trainer, "checkpoint_callback", None), "last_model_path", "") if trainer else ""
            if ckpt:
                last = f"; the skipped steps changed no weights, so the last checkpoint {ckpt} is intact"
            raise FloatingPointError(
                f"training diverged: {longest} optimizer step(s) in a row had a non-finite loss or gradient (by step "
                f"{step}, lambda={lam}; limit model.max_skipped_in_a_row={self.max_in_a_row}){last}. Lower the "
                "learning rate, clip gradients (trainer.gradient_clip_val), or check the data"
            )
        if skipped > self._reported:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"skipped {skipped - self._reported} optimizer step(s) with a non-finite loss or gradient by step "
                f"{step} ({skipped} in all, logged as train/skipped_steps)"
            )
            self._reported = skipped

    def state_dict(self) -> dict:
        return {"skipped": int(self.skipped), "in_a_row": int(self._run)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = torch.tensor(float(state.get("skipped", 0)))
        self._run = torch.tensor(float(state.get("in_a_row", 0)))
        self._longest = self._run.clone()
        self._reported = int(self.skipped)
