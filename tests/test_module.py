"""The LightningModule on real Trainer runs: logging, EMA, sampling, checkpoints, bad input."""

import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from mmf_lightning import MeanFlowModule
from mmf_lightning.callbacks import LambdaScheduler
from mmf_lightning.callbacks.sample_figures import ema_module
from mmf_lightning.data import ToyDataModule
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import LinearWarmup, ModularMeanFlow, TimeSampler


def _module(dim=2, **kw):
    return MeanFlowModule(
        MLP(dim=dim, width=32, depth=2, time_dim=16),
        ModularMeanFlow(tangent="instantaneous", time_sampler=TimeSampler("uniform", equal_fraction=0.25)),
        **{"lr": 1e-3, **kw},
    )


def _data():
    return ToyDataModule("moons", num_train=512, num_val=64, batch_size=64)


def test_training_logs_the_stability_measures(tmp_path):
    module = _module(loss_var_window=3)
    trainer = quiet_trainer(tmp_path, callbacks=[LambdaScheduler(LinearWarmup(4))], enable_checkpointing=False)
    trainer.fit(module, _data())
    logged = trainer.logged_metrics
    for key in ("train/loss", "train/lambda", "train/grad_norm", "train/loss_var", "train/mse"):
        assert key in logged and torch.isfinite(logged[key])
    assert logged["train/lambda"] == 1.0  # step 5 of a 4-step warmup
    assert module.lam == 1.0


def test_loss_window_survives_a_checkpoint_and_resume(tmp_path):
    """The window behind train/loss_var (and `evaluate`'s loss variance) is saved and restored:
    a resumed run continues it."""
    module = _module(loss_var_window=5)
    trainer = quiet_trainer(tmp_path, callbacks=[LambdaScheduler(LinearWarmup(4))], enable_checkpointing=False)
    trainer.fit(module, _data())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    saved = torch.load(tmp_path / "a.ckpt", weights_only=False)["mmf_lightning"]["loss_window"]
    assert saved == [float(v) for v in module._loss_window] and len(saved) == 5
    reloaded = MeanFlowModule.load_from_checkpoint(tmp_path / "a.ckpt")
    assert float(reloaded.loss_variance()) == pytest.approx(torch.tensor(saved, dtype=torch.float64).var().item())
    resumed = _module(loss_var_window=5)
    trainer = quiet_trainer(
        tmp_path, max_steps=7, callbacks=[LambdaScheduler(LinearWarmup(4))], enable_checkpointing=False
    )
    trainer.fit(resumed, _data(), ckpt_path=tmp_path / "a.ckpt")
    assert [float(v) for v in resumed._loss_window][:4] == saved[1:]  # one new step pushed the oldest out


def test_checkpoint_reloads_in_a_fresh_process_with_ema_weights(tmp_path):
    module = _module()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    ema = EMAWeightAveraging(decay=0.5)
    trainer = quiet_trainer(tmp_path, callbacks=[LambdaScheduler(LinearWarmup(2)), ema, ckpt])
    trainer.fit(module, _data())
    path = tmp_path / "ckpt" / "last.ckpt"
    # the checkpoint holds the EMA weights, which differ from the raw weights
    state = torch.load(path, weights_only=False)
    raw, averaged = state["current_model_state"], state["state_dict"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)
    expected = ema_module(trainer, module).sample(8, steps=2, generator=torch.Generator().manual_seed(3))
    torch.save(expected, tmp_path / "expected.pt")
    script = (
        "import torch; from mmf_lightning import MeanFlowModule; "
        f"m = MeanFlowModule.load_from_checkpoint({str(path)!r}); "
        "s = m.sample(8, steps=2, generator=torch.Generator().manual_seed(3)); "
        f"e = torch.load({str(tmp_path / 'expected.pt')!r}); "
        "assert torch.allclose(s, e, atol=1e-6), (s - e).abs().max(); "
        "assert m.lam == 1.0, m.lam; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_sample_and_trajectory():
    module = _module().eval()
    traj = module.sample_trajectory(5, steps=3, generator=torch.Generator().manual_seed(0))
    assert traj.shape == (4, 5, 2)
    e = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(traj[0], e)
    one = module.sample(5, steps=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(one, e - module.average_velocity(e, 0.0, 1.0))
    # a K-step sample is the jump applied on the grid 1 > 2/3 > 1/3 > 0
    z = e
    with torch.no_grad():
        for t, r in ((1.0, 2 / 3), (2 / 3, 1 / 3), (1 / 3, 0.0)):
            z = z - (t - r) * module.average_velocity(z, r, t)
    torch.testing.assert_close(traj[-1], z)
    # sample keeps no intermediate states but draws and computes the same
    torch.testing.assert_close(module.sample(5, steps=3, generator=torch.Generator().manual_seed(0)), z)


def test_average_velocity_rejects_r_after_t():
    with pytest.raises(ValueError, match="0 <= r <= t <= 1, got r=0.8, t=0.5"):
        _module().average_velocity(torch.randn(3, 2), 0.8, 0.5)


def test_network_shape_must_fit_the_data(tmp_path):
    module = _module(dim=3)
    with pytest.raises(ValueError, match=r"network expects data of shape \(3,\) but the datamodule .* \(2,\)"):
        quiet_trainer(tmp_path, callbacks=[LambdaScheduler()]).fit(module, _data())
    assert module.global_step == 0


def test_missing_lambda_scheduler_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no LambdaScheduler callback"):
        quiet_trainer(tmp_path).fit(_module(), _data())


@pytest.mark.parametrize("kw, match", [({"lr": -1.0}, "need lr > 0"), ({"lr_warmup_steps": -3}, "lr_warmup_steps")])
def test_bad_optimizer_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        _module(**kw)


def test_cosine_learning_rate_with_warmup(tmp_path):
    module = _module(lr_warmup_steps=2, min_lr=1e-4)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    quiet_trainer(tmp_path, max_steps=10, callbacks=[LambdaScheduler(), Record()], enable_checkpointing=False).fit(
        module, _data()
    )
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] > 1e-4


# -- once per optimizer step, whatever the gradient accumulation ---------------------------------------
class _CountingCT:
    """A real ConsistencyTraining that also records the steps its target network moved at."""

    @staticmethod
    def make(**kw):
        from mmf_lightning.objectives import ConsistencyTraining

        class Counting(ConsistencyTraining):
            moved_at: list = []

            def on_optimizer_step(self, net, step):
                self.moved_at.append(step)
                super().on_optimizer_step(net, step)

        ct = Counting(**kw)
        ct.moved_at = []
        return ct


def test_target_network_loss_window_and_figures_move_once_per_optimizer_step(tmp_path):
    """accumulate_grad_batches=4 and 3 optimizer steps: the CT target moves 3 times (not 12, and not
    before the first optimizer step), the loss window holds 3 means of 4 micro-batch losses, and
    SampleFigures(every_n_steps=2) draws at step 2 and at the end (step 3), never at step 0."""
    from mmf_lightning.callbacks import SampleFigures

    ct = _CountingCT.make(total_steps=10)
    module = MeanFlowModule(MLP(dim=2, width=32, depth=2, time_dim=16), ct, lr=1e-3)
    micro = []

    class RecordLoss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            micro.append(batch_idx)

    figures = SampleFigures(num_samples=50, steps=(1,), every_n_steps=2)
    trainer = quiet_trainer(tmp_path, max_steps=3, accumulate_grad_batches=4, callbacks=[RecordLoss(), figures],
                            limit_val_batches=0, enable_checkpointing=False)  # fmt: skip
    before = [p.clone() for p in module.net.parameters()]
    trainer.fit(module, _data())
    assert ct.moved_at == [1, 2, 3]
    assert len(module._loss_window) == 3
    assert len(micro) == 12
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_2.png", "step_3.png"]
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters()))


def test_loss_window_holds_the_mean_micro_batch_loss_of_each_step(tmp_path):
    module = _module(loss_var_window=10)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(trainer.callback_metrics["train/loss"]))  # this micro-batch's loss

    trainer = quiet_trainer(tmp_path, max_steps=3, accumulate_grad_batches=2,
                            callbacks=[LambdaScheduler(), Record()], limit_val_batches=0,
                            enable_checkpointing=False)  # fmt: skip
    trainer.fit(module, _data())
    expected = [(losses[2 * i] + losses[2 * i + 1]) / 2 for i in range(3)]
    assert [float(v) for v in module._loss_window] == pytest.approx(expected, rel=1e-5)


# -- validation draws from its own stream ----------------------------------------------------------------
def test_validation_leaves_the_training_stream_alone_and_repeats_itself(tmp_path):
    """The same run with and without validation ends with the same weights; validating twice gives
    the same validation loss."""
    weights = {}
    for validate in (True, False):
        torch.manual_seed(0)
        module = _module()
        trainer = quiet_trainer(tmp_path, max_steps=6, callbacks=[LambdaScheduler()], enable_checkpointing=False,
                                val_check_interval=2 if validate else 1.0, limit_val_batches=2 if validate else 0,
                                num_sanity_val_steps=2 if validate else 0)  # fmt: skip
        trainer.fit(module, _data())
        weights[validate] = [p.detach().clone() for p in module.parameters()]
    for a, b in zip(weights[True], weights[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    module = _module()
    first, second = (
        quiet_trainer(tmp_path, callbacks=[LambdaScheduler()]).validate(module, _data(), verbose=False)[0]["val/loss"]
        for _ in range(2)
    )
    assert first == second


def test_plain_tensor_and_pair_batches_validate(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(32, 2)
    module = _module()
    for dataset in (TensorDataset(x), TensorDataset(x, torch.zeros(32, dtype=torch.long))):
        out = quiet_trainer(tmp_path, callbacks=[LambdaScheduler()]).validate(
            module, DataLoader(dataset, batch_size=16), verbose=False
        )
        assert out[0]["val/loss"] > 0


# -- the global batch ---------------------------------------------------------------------------------------
def test_batch_size_is_the_global_batch_of_an_optimizer_step(tmp_path, capsys):
    rows = []

    class Rows(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rows.append(batch["x"].shape[0])

    trainer = quiet_trainer(tmp_path, max_steps=2, accumulate_grad_batches=4, callbacks=[LambdaScheduler(), Rows()],
                            limit_val_batches=0, enable_checkpointing=False)  # fmt: skip
    trainer.fit(_module(), _data())  # batch_size=64: 4 micro-batches of 16 rows
    assert rows == [16] * 8
    with pytest.raises(ValueError, match=r"batch_size=64 is the global batch .* 1 rank\(s\) x 3 accumulated .* = 3"):
        quiet_trainer(tmp_path, accumulate_grad_batches=3, callbacks=[LambdaScheduler()]).fit(_module(), _data())


def test_the_global_batch_and_learning_rate_are_logged_at_start(tmp_path, caplog):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=logger, accumulate_grad_batches=2,
                        callbacks=[LambdaScheduler()], enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    with caplog.at_level("INFO"):
        trainer.fit(_module(lr=3e-4), _data())
    assert "global batch 64 = 1 device(s) x 32 rows x 2 accumulated micro-batch(es) per optimizer step" in caplog.text
    hparams = (tmp_path / "run" / "version_0" / "hparams.yaml").read_text()
    assert "global_batch_size: 64" in hparams and "device_batch_size: 32" in hparams


def test_cosine_learning_rate_follows_the_closed_form(tmp_path):
    """lr(k) = min_lr + (lr - min_lr) (1 + cos(pi (k - w) / (K - w))) / 2 after a linear warmup of w steps."""
    lr, min_lr, warmup, total = 1e-3, 1e-4, 3, 12
    module = _module(lr=lr, lr_warmup_steps=warmup, min_lr=min_lr)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    quiet_trainer(tmp_path, max_steps=total, callbacks=[LambdaScheduler(), Record()], limit_val_batches=0,
                  enable_checkpointing=False).fit(module, _data())  # fmt: skip
    expected = [lr * (k + 1) / warmup for k in range(warmup)]
    expected += [min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) / 2
                 for k in range(warmup, total)]  # fmt: skip
    assert lrs == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_precision_weights_are_refused_before_training(tmp_path, precision):
    module = _module()
    with pytest.raises(ValueError, match=rf"trainer.precision={precision} .* use bf16-mixed or 16-mixed"):
        quiet_trainer(tmp_path, precision=precision, callbacks=[LambdaScheduler()]).fit(module, _data())
    assert module.global_step == 0


def test_the_random_streams_round_trip_numpy_and_python_too():
    """gather_rng / restore_rng: after a restore, torch, numpy and Python's random draw what they drew after the
    gather (a resumed run's augmentations and peers' coins go on as they would have)."""
    import random
    from types import SimpleNamespace

    import numpy as np

    from mmf_lightning.training.rng_state import gather_rng, restore_rng

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = gather_rng(SimpleNamespace(world_size=1))

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    first = draws()
    draws()  # the streams move on
    restore_rng(state, rank=0, world_size=1)
    assert draws() == first
