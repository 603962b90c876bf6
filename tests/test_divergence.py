"""The divergence guard (module.SkipGuard): an optimizer step whose loss or gradient is not finite
changes nothing (weights, Adam's moments and step count, the EMA), is counted, and too many in a
row stop the run with its last checkpoint intact."""

import lightning as L
import pytest
import torch
from helpers import NaNInjector, quiet_trainer

from mmf_lightning.callbacks import EMAWeightAveraging, LambdaScheduler
from mmf_lightning.data import ToyDataModule
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import ModularMeanFlow, TimeSampler
from mmf_lightning.training.module import MeanFlowModule
from mmf_lightning.training.skip_guard import SkipGuard


def _module(**kw):
    net = MLP(dim=2, width=32, depth=2, time_dim=16)
    objective = ModularMeanFlow(tangent="instantaneous", time_sampler=TimeSampler("uniform", equal_fraction=0.25))
    return MeanFlowModule(net, objective, lr=1e-3, **kw)


def _data():
    return ToyDataModule("moons", num_train=512, num_val=64, batch_size=64)


class Snapshots(L.Callback):
    """Weights, EMA weights and Adam's step count after every optimizer step (and before the first)."""

    def __init__(self):
        self.weights, self.ema, self.adam_steps, self.skipped = [], [], [], []

    def _record(self, trainer, pl_module):
        self.weights.append([p.detach().clone() for p in pl_module.net.parameters()])
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMAWeightAveraging))._average_model
        self.ema.append([p.detach().clone() for p in ema.module.net.parameters()] if ema is not None else None)
        state = trainer.optimizers[0].state
        self.adam_steps.append(int(state[next(pl_module.net.parameters())]["step"]) if state else 0)
        self.skipped.append(int(pl_module.guard.skipped))

    def on_train_start(self, trainer, pl_module):
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(trainer, pl_module)


class GradientNaN(L.Callback):
    """A finite loss whose gradient is not finite, at one step."""

    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            next(pl_module.net.parameters()).grad[0] = float("inf")


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_a_non_finite_step_changes_nothing_and_training_goes_on(tmp_path, poison):
    snaps = Snapshots()
    inject = NaNInjector(rank=0, step=3) if poison == "loss" else GradientNaN(step=3)
    ema = EMAWeightAveraging(decay=0.9)
    trainer = quiet_trainer(tmp_path, max_steps=6, callbacks=[LambdaScheduler(), ema, inject, snaps],
                            limit_val_batches=0, enable_checkpointing=False)  # fmt: skip
    module = _module()
    trainer.fit(module, _data())
    assert trainer.global_step == 6 and snaps.skipped == [0, 0, 0, 0, 1, 1, 1]
    assert _equal(snaps.weights[4], snaps.weights[3])  # step 4 (global_step 3 -> 4) was skipped
    assert _equal(snaps.ema[4], snaps.ema[3])
    assert snaps.adam_steps == [0, 1, 2, 3, 3, 4, 5]
    for k in (1, 2, 3, 5, 6):  # the others moved the weights and the EMA
        assert not _equal(snaps.weights[k], snaps.weights[k - 1])
        assert snaps.ema[k - 1] is None or not _equal(snaps.ema[k], snaps.ema[k - 1])
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    assert float(trainer.logged_metrics["train/skipped_steps"]) == 1.0
    assert torch.isfinite(module.loss_variance())  # the skipped step's NaN is left out of the window


def test_too_many_skipped_steps_in_a_row_stop_the_run_with_its_checkpoint_intact(tmp_path):
    snaps = Snapshots()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    trainer = quiet_trainer(tmp_path, max_steps=20, limit_val_batches=0, callbacks=[
        LambdaScheduler(), EMAWeightAveraging(decay=0.9), NaNInjector(rank=0, step=4, until=100), snaps, ckpt,
    ])  # fmt: skip
    module = _module(max_skipped_in_a_row=3)
    with pytest.raises(FloatingPointError) as err:
        trainer.fit(module, _data())
    message = str(err.value)
    assert "4 optimizer step(s) in a row" in message and "by step 8" in message
    assert "max_skipped_in_a_row=3" in message and "last.ckpt" in message and "is intact" in message
    # the last checkpoint (step 8, after the 4 skipped steps) holds the EMA of the last good step
    reloaded = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert reloaded["global_step"] == 8
    saved = [reloaded["state_dict"][f"net.{name}"] for name, _ in module.net.named_parameters()]
    assert _equal(saved, snaps.ema[4]) and _equal(snaps.weights[8], snaps.weights[4])
    assert reloaded["mmf_lightning"]["skip_guard"] == {"skipped": 4, "in_a_row": 4}
    again = MeanFlowModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in again.parameters())


def test_the_first_bad_step_stops_the_run_when_none_may_be_skipped(tmp_path):
    trainer = quiet_trainer(tmp_path, max_steps=5, limit_val_batches=0, enable_checkpointing=False,
                            callbacks=[LambdaScheduler(), NaNInjector(rank=0, step=2)])  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"1 optimizer step\(s\) in a row.*by step 3"):
        trainer.fit(_module(max_skipped_in_a_row=0), _data())


def test_without_a_fused_optimizer_the_grads_are_dropped():
    """SGD with momentum has no found_inf: the guard drops the grads, so the step moves nothing."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    guard = SkipGuard(max_in_a_row=5)
    p.grad = torch.ones(3)
    guard.skip_if_not_finite(opt, p.grad.norm())
    opt.step()
    before = p.detach().clone()
    guard.loss_not_finite(torch.tensor(True))
    p.grad = torch.ones(3)
    kept = guard.skip_if_not_finite(opt, p.grad.norm())
    assert not kept and p.grad is None
    opt.step()
    assert torch.equal(p.detach(), before) and int(guard.skipped) == 1
    guard.check(2, 0.0)  # one in a row, under the limit: a warning only


def test_loss_variance_leaves_out_skipped_steps():
    module = _module(loss_var_window=4)
    module._loss_window.extend(torch.tensor(v) for v in (1.0, float("nan"), 3.0))
    assert float(module.loss_variance()) == pytest.approx(2.0)  # var([1, 3]), unbiased


@pytest.mark.parametrize("bad", [{"max_skipped_in_a_row": -1}, {"skip_check_every_n_steps": 0}])
def test_bad_guard_settings_are_named(bad):
    with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
        _module(**bad)


def test_the_count_of_skipped_steps_in_a_row_restarts_after_a_good_step():
    """skip, good, good, skip: never 2 in a row, so a limit of 1 in a row does not stop the run (checked every
    step, and once after all four)."""
    for check_every_step in (True, False):
        guard = SkipGuard(max_in_a_row=1)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
        for step, norm in enumerate([float("nan"), 1.0, 1.0, float("inf")]):
            guard.skip_if_not_finite(opt, torch.tensor(norm))
            if check_every_step:
                guard.check(step, 0.0)
        guard.check(4, 0.0)
        assert int(guard.skipped) == 2
    guard.skip_if_not_finite(opt, torch.tensor(float("nan")))  # now two in a row
    with pytest.raises(FloatingPointError, match=r"2 optimizer step\(s\) in a row"):
        guard.check(5, 0.0)


@pytest.mark.parametrize("stop", ["divergence", "exception"])
def test_a_stop_mid_run_prints_the_command_that_resumes_it(tmp_path, caplog, stop):
    """The divergence stop and an exception mid-run leave the last checkpoint as it was, and say so with the command
    that resumes from it (the CLI gives SaveOnPreemption its command line with --ckpt_path last)."""
    import logging

    from mmf_lightning.callbacks.preemption import SaveOnPreemption

    class Crash(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                raise RuntimeError("the node's disk is full")

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    poison = [NaNInjector(rank=0, step=4, until=100)] if stop == "divergence" else [Crash()]
    resume = "python -m mmf_lightning fit --config x.yaml --ckpt_path last"
    trainer = quiet_trainer(tmp_path, max_steps=20, limit_val_batches=0,
                            callbacks=[LambdaScheduler(), *poison, ckpt, SaveOnPreemption(resume)])  # fmt: skip
    caplog.set_level(logging.INFO)
    with pytest.raises(FloatingPointError if stop == "divergence" else RuntimeError):
        trainer.fit(_module(max_skipped_in_a_row=3), _data())
    kind = "FloatingPointError" if stop == "divergence" else "RuntimeError"
    assert f"({kind}); its last checkpoint {tmp_path / 'ckpt' / 'last.ckpt'} is intact; resume with: {resume}" in (
        caplog.text
    )
