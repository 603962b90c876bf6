"""torch.compile (``nets.compiled.CompiledNet``, ``MeanFlowModule(compile=True)``) changes no number: the
same loss and gradients as eager on each JVP path, the same training run, the same checkpoint keys."""

import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

from mmf_lightning import MeanFlowModule
from mmf_lightning.callbacks import LambdaScheduler
from mmf_lightning.data import ToyDataModule
from mmf_lightning.nets import MLP, DiT
from mmf_lightning.nets.compiled import CompiledNet
from mmf_lightning.objectives import LinearWarmup, ModularMeanFlow, TimeSampler

OBJECTIVE = ModularMeanFlow("instantaneous", TimeSampler("uniform", equal_fraction=0.25))


def _loss_and_grads(net, params, x, lam):
    torch.manual_seed(1)  # the same times, labels and dropout masks for both
    loss = OBJECTIVE(net, x, lam=lam, e=torch.randn_like(x)).loss
    return loss, torch.autograd.grad(loss, params)


def _assert_same(net, x, lam):
    params = list(net.parameters())
    loss, grads = _loss_and_grads(net, params, x, lam)
    compiled_loss, compiled_grads = _loss_and_grads(CompiledNet(net), params, x, lam)
    assert compiled_loss.item() == loss.item()
    for g, cg in zip(grads, compiled_grads, strict=True):
        torch.testing.assert_close(cg, g, rtol=1e-5, atol=1e-6)  # fused kernels round differently


@pytest.mark.slow  # a cold compilation: 20-40 s on 2 cores
def test_compiled_mlp_with_dropout_gives_the_eager_loss_and_gradients():
    """With dropout the MLP's JVP is torch.func.jvp over the compiled forward, and lambda = 0 replays the
    JVP's dropout masks in the plain forward: the compiled masks must be eager's. (The explicit-jvp path is
    compiled in the training run below, marked slow.)"""
    torch.manual_seed(0)
    net = MLP(dim=2, width=16, depth=2, time_dim=8, dropout=0.2)
    assert not net.has_explicit_jvp
    _assert_same(net, torch.randn(32, 2), 0.0)


@pytest.mark.slow
def test_compiled_dit_gives_the_eager_loss_and_gradients():
    torch.manual_seed(0)
    net = DiT(in_channels=1, image_size=4, patch_size=2, width=16, depth=1, heads=2, time_dim=16)
    _assert_same(net, torch.randn(8, 1, 4, 4), 1.0)


def test_compiled_net_keeps_the_networks_attributes_and_weights():
    net = MLP(dim=2, width=8, depth=1, num_classes=3)
    compiled = CompiledNet(net)
    assert compiled.num_classes == 3 and compiled.has_explicit_jvp and compiled.data_shape == (2,)
    assert not list(vars(compiled).get("parameters", ()))  # nothing of its own: the net's weights only
    with pytest.raises(AttributeError, match="has no explicit jvp"):
        CompiledNet(torch.nn.Linear(2, 2)).jvp()


def _fit(tmp_path, compile):
    torch.manual_seed(0)
    module = MeanFlowModule(
        MLP(dim=2, width=16, depth=2, time_dim=8),
        ModularMeanFlow("instantaneous", TimeSampler("uniform", equal_fraction=0.25)),
        lr=1e-2,
        compile=compile,
    )
    losses = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    trainer = quiet_trainer(
        tmp_path / str(compile),
        max_steps=4,
        callbacks=[LambdaScheduler(LinearWarmup(2)), Record(), EMAWeightAveraging(decay=0.5)],
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, ToyDataModule("moons", num_train=256, num_val=64, batch_size=64))
    trainer.save_checkpoint(tmp_path / f"{compile}.ckpt")
    return losses, module


@pytest.mark.slow  # two cold compilations: about a minute on 2 cores
def test_a_compiled_training_run_is_the_eager_run(tmp_path):
    """Four optimizer steps with lambda rising: the same losses and weights, and the same checkpoint keys."""
    eager_losses, eager = _fit(tmp_path, False)
    compiled_losses, compiled = _fit(tmp_path, True)
    assert compiled._compiled_net is not None  # the compiled path did run
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    for p, q in zip(eager.net.parameters(), compiled.net.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
    keys = [set(torch.load(tmp_path / f"{c}.ckpt", weights_only=False)["state_dict"]) for c in (False, True)]
    assert keys[0] == keys[1]


def test_a_compiled_net_and_a_module_holding_one_can_be_deep_copied():
    """Consistency training's EMA target is a deep copy of the net it is called with (the compiled one under
    model.compile), and Lightning's EMA deep-copies the module, which keeps its compiled net between fits."""
    import copy

    from mmf_lightning.objectives import ConsistencyTraining

    torch.manual_seed(0)
    net = MLP(dim=2, width=8, depth=1)
    twin = copy.deepcopy(CompiledNet(net))
    assert isinstance(twin, CompiledNet) and twin.net is not net
    for p, q in zip(net.parameters(), twin.net.parameters(), strict=True):
        assert torch.equal(p, q) and p is not q
    objective = ConsistencyTraining(total_steps=10, target_ema=0.9)
    loss = objective(CompiledNet(net, backend="eager"), torch.randn(8, 2)).loss  # copies it for the target
    assert torch.isfinite(loss) and objective.target is not None
    module = MeanFlowModule(net, ModularMeanFlow(), compile=True)
    module._training_net()  # what the first compiled training step builds and keeps
    copied = copy.deepcopy(module)
    assert copied._compiled_net is None or copied._compiled_net.net is copied.net
