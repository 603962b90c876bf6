"""Warm start: a fit that starts its network from a flow-matching run of ours (its EMA weights) or from a plain
state dict through a key mapping, named errors on any mismatch before training, no reload on resume; and the
in-run recipe, flow matching for N steps (no JVP) and then the curriculum."""

import lightning as L
import pytest
import torch
from helpers import quiet_trainer

from mmf_lightning import MeanFlowModule
from mmf_lightning.callbacks import EMAWeightAveraging, LambdaScheduler
from mmf_lightning.data import ToyDataModule
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import FlowMatching, LinearWarmup, ModularMeanFlow, TimeSampler
from mmf_lightning.objectives import meanflow as mf
from mmf_lightning.training.checkpoints import CheckpointError
from mmf_lightning.training.warm_start import initial_state, load_initial_weights


def _net(width=32):
    return MLP(dim=2, width=width, depth=2, time_dim=16)


def _data():
    return ToyDataModule("moons", num_train=512, num_val=64, batch_size=64)


@pytest.fixture(scope="module")
def flow_matching_ckpt(tmp_path_factory):
    """A 6-step flow-matching run of ours, with EMA: its checkpoint and its EMA net's weights."""
    tmp = tmp_path_factory.mktemp("fm")
    torch.manual_seed(0)
    module = MeanFlowModule(_net(), FlowMatching(TimeSampler("uniform")), lr=1e-2)
    trainer = quiet_trainer(tmp, max_steps=6, callbacks=[EMAWeightAveraging(decay=0.5)])
    trainer.fit(module, datamodule=_data())
    path = tmp / "fm.ckpt"
    trainer.save_checkpoint(path)
    return path, MeanFlowModule.load_from_checkpoint(path).net.state_dict()


def test_a_fit_starts_from_a_flow_matching_checkpoint_s_ema_weights(flow_matching_ckpt, tmp_path):
    path, ema_weights = flow_matching_ckpt
    seen = {}

    class AtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update({k: v.clone() for k, v in pl_module.net.state_dict().items()})

    module = MeanFlowModule(_net(), ModularMeanFlow("instantaneous"), init_from=str(path))
    fresh = {k: v.clone() for k, v in module.net.state_dict().items()}
    quiet_trainer(tmp_path, max_steps=2, callbacks=[LambdaScheduler(LinearWarmup(2)), AtStart()]).fit(
        module, datamodule=_data()
    )
    assert seen.keys() == ema_weights.keys()
    for k in ema_weights:
        torch.testing.assert_close(seen[k], ema_weights[k], rtol=0, atol=0)
    assert not all(torch.equal(fresh[k], ema_weights[k]) for k in fresh)  # it did change the start


def test_a_plain_state_dict_through_a_key_map(tmp_path):
    source = _net()
    path = tmp_path / "weights.pt"
    torch.save({"model." + k: v for k, v in source.state_dict().items()}, path)
    target = _net()
    with pytest.raises(ValueError, match=r"missing from the file: .*not in the network: model\.") as err:
        load_initial_weights(target, path)
    assert "init_key_map" in str(err.value)
    assert load_initial_weights(target, path, {"model.": ""}) == len(source.state_dict())
    for a, b in zip(source.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)
    torch.save({"a.w": torch.zeros(1), "b.w": torch.ones(1)}, path)
    with pytest.raises(ValueError, match=r"maps two weights of .*weights.pt to 'w'"):
        initial_state(path, {"a.": "", "b.": ""})


def test_mismatched_shapes_stop_the_fit_before_training(flow_matching_ckpt, tmp_path):
    path, _ = flow_matching_ckpt
    module = MeanFlowModule(_net(width=48), ModularMeanFlow("instantaneous"), init_from=str(path))
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[LambdaScheduler(LinearWarmup(2))])
    with pytest.raises(
        ValueError, match=r"cannot start MLP from .*shapes differ: body\.0\.bias: \(32,\) in the file, "
    ):
        trainer.fit(module, datamodule=_data())
    assert trainer.global_step == 0


def test_files_that_hold_no_weights_are_named(tmp_path):
    path = tmp_path / "not_weights.pt"
    torch.save({"lr": 1e-3}, path)
    with pytest.raises(CheckpointError, match="not_weights.pt holds no state dict"):
        initial_state(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        initial_state(tmp_path / "missing.ckpt")


def test_a_resumed_fit_does_not_start_again_from_init_from(flow_matching_ckpt, tmp_path):
    path, _ = flow_matching_ckpt
    staged = tmp_path / "staged.ckpt"
    staged.write_bytes(path.read_bytes())
    module = MeanFlowModule(_net(), ModularMeanFlow("instantaneous"), init_from=str(staged))
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[LambdaScheduler(LinearWarmup(2))])
    trainer.fit(module, datamodule=_data())
    resume = tmp_path / "after_2.ckpt"
    trainer.save_checkpoint(resume)
    staged.unlink()  # a resumed run must not need it: its weights are in the checkpoint
    module = MeanFlowModule(_net(), ModularMeanFlow("instantaneous"), init_from=str(staged))
    trainer = quiet_trainer(tmp_path, max_steps=4, callbacks=[LambdaScheduler(LinearWarmup(2))])
    trainer.fit(module, datamodule=_data(), ckpt_path=resume)
    assert trainer.global_step == 4


def test_flow_matching_steps_run_no_jvp_then_the_meanflow_rows_return(monkeypatch):
    calls = []
    real = mf.u_and_dudt
    monkeypatch.setattr(mf, "u_and_dudt", lambda *a, **k: calls.append(1) or real(*a, **k))
    net, x = _net(), torch.randn(64, 2)
    objective = ModularMeanFlow("instantaneous", TimeSampler("uniform", equal_fraction=0.25), flow_matching_steps=10)
    torch.manual_seed(3)
    early = objective(net, x, step=9, lam=0.0)
    assert not calls and early.stats["frac_r_lt_t"] == 0
    objective(net, x, step=10, lam=0.0)
    assert calls
    schedule = LinearWarmup(4, delay_steps=10)
    assert [schedule(s) for s in (0, 10, 12, 14, 20)] == [0.0, 0.0, 0.5, 1.0, 1.0]
