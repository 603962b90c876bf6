"""SpikeRollback: a spike injected into a real run (the weights blown up after one step) brings back the last good
snapshot's weights, optimizer state and EMA, lowers the learning rate and lambda, and is logged; a plain run
rolls nothing back."""

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer

from mmf_lightning import MeanFlowModule
from mmf_lightning.callbacks import EMAWeightAveraging, LambdaScheduler, SpikeRollback
from mmf_lightning.data import ToyDataModule
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import Constant, ModularMeanFlow, TimeSampler
from mmf_lightning.runs import Run, figures
from mmf_lightning.runs.loggers import CSVLogger


def _module():
    torch.manual_seed(0)
    net = MLP(dim=2, width=32, depth=2, time_dim=16)
    return MeanFlowModule(net, ModularMeanFlow("instantaneous", TimeSampler("uniform", equal_fraction=0.25)), lr=3e-3)


def _data():
    return ToyDataModule("moons", num_train=4096, num_val=64, batch_size=128)


class BlowUp(L.Callback):
    """After optimizer step ``step``, scales every weight by 50, as a diverging update would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.net.parameters():
                    p.mul_(50.0)


class Record(L.Callback):
    """The weights, EMA, optimizer moments and lr at the start of ``start_step``, and the same right after the
    optimizer step ``after_step`` (when SpikeRollback, listed before this, has judged it)."""

    def __init__(self, start_step: int, after_step: int):
        self.start_step, self.after_step, self.start, self.after = start_step, after_step, None, None

    def _state(self, trainer, pl_module):
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMAWeightAveraging))._average_model
        opt = trainer.optimizers[0]
        return {
            "net": {k: v.clone() for k, v in pl_module.net.state_dict().items()},
            "ema": {k: v.clone() for k, v in ema.state_dict().items()},
            "exp_avg": [opt.state[p]["exp_avg"].clone() for p in pl_module.net.parameters() if p in opt.state],
            "lr": opt.param_groups[0]["lr"],
            "lam": pl_module.lam,
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.start_step:
            self.start = self._state(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.after_step:
            self.after = self._state(trainer, pl_module)


def _fit(tmp_path, callbacks, steps, logger=False):
    module = _module()
    trainer = quiet_trainer(
        tmp_path,
        max_steps=steps,
        callbacks=[LambdaScheduler(Constant(1.0)), EMAWeightAveraging(decay=0.9), *callbacks],
        logger=logger,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=_data())
    return trainer, module


def test_an_injected_spike_rolls_back_to_the_last_good_snapshot(tmp_path):
    rollback = SpikeRollback(every_n_steps=10, warmup_steps=15, lr_factor=0.5, lambda_factor=0.5)
    record = Record(start_step=30, after_step=33)  # snapshots at 10, 20, 30; blown up after step 32
    logger = CSVLogger(tmp_path, name="run")
    trainer, module = _fit(tmp_path, [rollback, BlowUp(32), record], steps=45, logger=logger)
    assert rollback.rollbacks == 1
    (event,) = rollback.events
    assert event["step"] == 33 and event["restored_step"] == 30 and event["loss"] > 100
    for key in ("net", "ema"):
        for name, value in record.start[key].items():
            torch.testing.assert_close(record.after[key][name], value, rtol=0, atol=0, msg=f"{key} {name}")
    for a, b in zip(record.after["exp_avg"], record.start["exp_avg"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert record.after["lr"] == pytest.approx(0.5 * record.start["lr"])
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs == [pytest.approx(1.5e-3)]  # the schedule goes on lower
    assert module.lam == 0.5  # lambda x 0.5 from the next step on
    assert trainer.global_step == 45 and trainer.callback_metrics["train/rollbacks"] == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # the training curves show it: a dashed line on the loss panels where the logged loss spiked
    run = Run(Path(logger.log_dir), {})
    steps, losses = run.metrics["train/loss"]
    spike = steps[losses.index(max(losses))]
    assert figures.rollback_steps(run) == [spike] and max(losses) > 100 * losses[steps.index(spike - 3)]
    smoothed, raw, _ = figures.loss_curves([run]).axes[:3]
    assert [line.get_xdata()[0] for line in raw.get_lines() if line.get_linestyle() == "--"] == [spike]


def test_a_plain_run_rolls_nothing_back(tmp_path):
    rollback = SpikeRollback(every_n_steps=10, warmup_steps=15)
    _fit(tmp_path, [rollback], steps=80)
    assert rollback.rollbacks == 0 and rollback._good is not None and rollback.stats["loss"].count == 80


def test_a_run_that_keeps_spiking_stops_with_an_error(tmp_path):
    class BlowUpEvery(BlowUp):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= self.step:
                with torch.no_grad():
                    for p in pl_module.net.parameters():
                        p.mul_(50.0)

    with pytest.raises(RuntimeError, match="after 1 rollbacks already: the run is not recovering"):
        _fit(tmp_path, [SpikeRollback(every_n_steps=5, warmup_steps=10, max_rollbacks=1), BlowUpEvery(20)], 40)


def test_state_round_trip_and_bad_arguments():
    a = SpikeRollback()
    for v in (1.0, 1.2, 0.9):
        a.stats["loss"].add(v)
    a.rollbacks, a.events = 2, [{"step": 5, "restored_step": 0, "loss": 9.0}]
    b = SpikeRollback()
    b.load_state_dict(a.state_dict())
    assert b.rollbacks == 2 and b.events == a.events and b.stats["loss"].bound(6, 2) == a.stats["loss"].bound(6, 2)
    with pytest.raises(ValueError, match="threshold > 0"):
        SpikeRollback(threshold=float("nan"))
    with pytest.raises(ValueError, match="watch must be"):
        SpikeRollback(watch="lr")
