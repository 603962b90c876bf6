"""The LightningModule on real Trainer runs: logging, EMA, sampling, checkpoints, bad input."""

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
