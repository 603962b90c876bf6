"""Mixed precision: the JVP layers under autocast, the MeanFlow loss's gradients in bf16 / fp16
against float32, the JVP kept in float32, and a real Trainer run in ``bf16-mixed``.

Tolerances are in units of the low dtype's unit roundoff u (bf16 2^-8, fp16 2^-11): an autocast
forward and backward rounds every conv / linear / matmul input to u, and the measured relative
gradient error is about 5u for both dtypes (small UNet: bf16 0.020, fp16 0.0026; MLP below 1u).
"""

import math
from contextlib import nullcontext

import lightning as L
import pytest
import torch
from helpers import quiet_trainer
from torch import nn

import mmf_lightning.objectives.meanflow as meanflow
from mmf_lightning import MeanFlowModule
from mmf_lightning.callbacks import LambdaScheduler
from mmf_lightning.data import DigitsDataModule
from mmf_lightning.nets import MLP, DiT, UNet
from mmf_lightning.nets import jvp_layers as J
from mmf_lightning.objectives import LinearWarmup, ModularMeanFlow

LOW = [torch.bfloat16, torch.float16]  # CPU autocast in torch 2.14 runs conv2d in both (checked by the hooks below)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.fixture(autouse=True)
def _one_thread():
    """These nets are tiny: a second intra-op thread only adds contention on a shared 2-core machine
    (measured 10x slower wall time there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small_unet():
    return UNet(
        in_channels=1,
        image_size=8,
        channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        dropout=0.0,
        groups=8,
    )


def _mlp():
    return MLP(dim=2, width=64, depth=3, time_dim=16)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# -- the layers alone ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", LOW)
def test_conv_under_autocast_equals_torch_conv(dtype):
    """Forward in the autocast dtype, float32 parameter gradients, the same numbers as nn.Conv2d."""
    ref, new = nn.Conv2d(8, 4, 3, padding=1), J.Conv2d(8, 4, 3, padding=1)
    new.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 5, 5)
    outs = []
    for layer in (ref, new):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype):
            y = layer(xi)
        y.float().sin().sum().backward()
        outs.append((y, xi.grad, layer.weight.grad, layer.bias.grad))
    (y1, *g1), (y2, *g2) = outs
    assert y2.dtype == y1.dtype == dtype
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    for a, b in zip(g2, g1):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", LOW)
def test_group_norm_under_autocast_runs_in_float32(dtype):
    """GroupNorm casts a low-precision input up (torch's CUDA autocast policy, on every device)."""
    ref, new = nn.GroupNorm(4, 8), J.GroupNorm(4, 8)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    new.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 5, 5).to(dtype)  # what the previous (autocast) conv hands over
    xr, xn = x.clone().float().requires_grad_(), x.clone().requires_grad_()
    y1 = ref(xr)
    with torch.autocast("cpu", dtype):
        y2 = new(xn)
    assert y2.dtype == torch.float32
    y1.sin().sum().backward()
    y2.sin().sum().backward()
    torch.testing.assert_close(y2, y1)
    assert xn.grad.dtype == dtype and new.weight.grad.dtype == torch.float32
    torch.testing.assert_close(xn.grad, xr.grad.to(dtype))
    torch.testing.assert_close(new.weight.grad, ref.weight.grad)
    torch.testing.assert_close(new.bias.grad, ref.bias.grad)


def _value_tangent_grads(layer, x, dx):
    x = x.clone().requires_grad_()
    y, dy = torch.func.jvp(layer, (x,), (dx,))
    loss = y.sin().sum() + (dy.square() * y).sum()
    return (y, dy, *torch.autograd.grad(loss, [x, *layer.parameters()]))


@pytest.mark.parametrize("make", [lambda: J.Conv2d(8, 4, 3, padding=1), lambda: J.GroupNorm(4, 8), J.SiLU])
@pytest.mark.parametrize("dtype", LOW)
def test_jvp_in_autocast_disabled_region_is_plain_float32(make, dtype):
    """What ``u_and_dudt`` does: a JVP with autocast disabled inside an active autocast. The
    layers must not cast there: values, tangents and second-order gradients are the float32 ones."""
    layer = make()
    x = torch.randn(2, 8, 5, 5)
    dx = torch.randn_like(x)
    ref = _value_tangent_grads(layer, x, dx)
    with torch.autocast("cpu", dtype), torch.autocast("cpu", enabled=False):
        got = _value_tangent_grads(layer, x, dx)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- the loss: dtype x lambda x net x tangent -----------------------------------------------------
def _record_precisions(net, monkeypatch):
    """Records (autocast on?, output dtype) of every conv / linear call (and of the MLP's explicit JVP,
    which calls no module), and the dtypes of (u, du/dt) that the objective's JVP returns."""
    layers, jvps = [], []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(lambda _m, _i, out: layers.append((torch.is_autocast_enabled("cpu"), out.dtype)))
    if hasattr(net, "jvp"):
        explicit = net.jvp

        def recorded(*args, **kwargs):
            u, du = explicit(*args, **kwargs)
            layers.append((torch.is_autocast_enabled("cpu"), du.dtype))
            return u, du

        monkeypatch.setattr(net, "jvp", recorded)
    real = meanflow.u_and_dudt

    def spy(*args, **kwargs):
        u, dudt = real(*args, **kwargs)
        jvps.append((u.dtype, dudt.dtype))
        return u, dudt

    monkeypatch.setattr(meanflow, "u_and_dudt", spy)
    return layers, jvps


@pytest.mark.parametrize("tangent", ["instantaneous", "conditional"])
@pytest.mark.parametrize("make_net", [_small_unet, _mlp], ids=["unet", "mlp"])
@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("dtype", LOW)
def test_meanflow_gradients_under_autocast_match_float32(dtype, lam, make_net, tangent, monkeypatch):
    net = make_net()
    shape = net.data_shape
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, *shape, generator=g) * 2 - 1
    e = torch.randn(8, *shape, generator=g)
    t = torch.rand(8, generator=g) * 0.9 + 0.1
    r = t * torch.rand(8, generator=g)
    r[:3] = t[:3]  # flow-matching rows (a plain autocast forward) next to JVP rows
    objective = ModularMeanFlow(tangent)

    def grads(precision):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", precision) if precision else nullcontext():
            out = objective(net, x, lam=lam, e=e, r=r, t=t)
        out.loss.backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing, f"no gradient for {missing}"
        assert all(p.grad.dtype == torch.float32 for p in net.parameters())
        return [p.grad.clone() for p in net.parameters()]

    g32 = grads(None)
    layers, jvps = _record_precisions(net, monkeypatch)
    g_amp = grads(dtype)

    # the autocast forwards ran in the low dtype, the JVP pass in float32 (autocast off), both happened
    assert {dt for on, dt in layers if on} == {dtype}
    assert {dt for on, dt in layers if not on} == {torch.float32}
    assert jvps and all(dudt == torch.float32 for _, dudt in jvps)

    # ~5u measured (module docstring); 16u leaves a 3x margin for other seeds / BLAS kernels while a
    # dropped or mis-cast gradient path (relative error ~1) fails. Per tensor: 64u (about 0.25 in bf16),
    # so a parameter whose gradient is lost or wrong is caught even when it is small in the total.
    u = UNIT_ROUNDOFF[dtype]
    assert _rel(torch.cat([a.flatten() for a in g_amp]), torch.cat([b.flatten() for b in g32])) < 16 * u
    for (name, _), a, b in zip(net.named_parameters(), g_amp, g32):
        if b.norm() > 0:
            assert _rel(a, b) < 64 * u, name


def _dit():
    return DiT(
        in_channels=1, image_size=8, patch_size=2, width=32, depth=2, heads=2, num_classes=3, guidance_input=True
    )


@pytest.mark.parametrize("make_net", [_small_unet, _mlp, _dit], ids=["unet", "mlp", "dit"])
def test_time_embeddings_jvp_and_loss_reduction_stay_float32_under_bf16_autocast(make_net, monkeypatch):
    """The guards against late-training spikes in low precision: the (t, t - r) embedding (and a guidance scale's),
    du/dt and the per-sample squared residuals run in float32 while the layers around them run in bf16."""
    net = make_net()
    embeddings = []
    for m in (net.time_embed, getattr(net.class_embed, "scale_embed", None)):
        if m is not None:
            m.register_forward_hook(lambda _m, _i, out: embeddings.append(out.dtype))
    layers, jvps = _record_precisions(net, monkeypatch)
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(8, *net.data_shape, generator=g), torch.randn(8, *net.data_shape, generator=g)
    t = torch.rand(8, generator=g) * 0.9 + 0.1
    r = torch.where(torch.arange(8) < 3, t, t * torch.rand(8, generator=g))
    y = torch.randint(0, 3, (8,), generator=g) if net.num_classes else None
    objective = ModularMeanFlow("instantaneous", guidance_range=(1.0, 2.0) if y is not None else None)
    with torch.autocast("cpu", torch.bfloat16):
        out = objective(net, x, y, lam=1.0, e=e, r=r, t=t)
    assert {dt for on, dt in layers if on} == {torch.bfloat16}  # the rest did run in bf16
    assert embeddings and set(embeddings) == {torch.float32}
    assert jvps and all(dudt == torch.float32 for _, dudt in jvps)
    assert out.per_sample.dtype == out.loss.dtype == torch.float32


# -- a real Trainer in bf16-mixed ---------------------------------------------------------------
class _StepLosses(L.Callback):
    def __init__(self):
        self.losses, self.stem_dtypes = [], set()

    def on_fit_start(self, trainer, pl_module):
        pl_module.net.stem.register_forward_hook(lambda m, i, out: self.stem_dtypes.add(out.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _fit(tmp_path, precision, steps):
    L.seed_everything(0, verbose=False)
    module = MeanFlowModule(_small_unet(), ModularMeanFlow("instantaneous"))
    record = _StepLosses()
    trainer = quiet_trainer(
        tmp_path / precision,
        max_steps=steps,
        callbacks=[LambdaScheduler(LinearWarmup(2)), record],  # lambda 0, 0.5, 1, 1
        precision=precision,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
    assert trainer.global_step == steps
    return record


def test_trainer_bf16_mixed_on_cpu(tmp_path):
    amp = _fit(tmp_path, "bf16-mixed", 4)
    ref = _fit(tmp_path, "32-true", 1)
    assert amp.stem_dtypes == {torch.bfloat16, torch.float32}  # autocast forwards and float32 JVPs
    assert ref.stem_dtypes == {torch.float32}
    assert len(amp.losses) == 4 and all(math.isfinite(v) for v in amp.losses)
    # Same seed, batch, noise and times: the first losses differ only by bf16 rounding of u in the
    # autocast forwards. The loss averages 16 * 64 squared residuals, so the rounding mostly cancels
    # (measured ~2e-4 relative); one bf16 unit roundoff (3.9e-3) still fails any real mismatch.
    assert amp.losses[0] == pytest.approx(ref.losses[0], rel=UNIT_ROUNDOFF[torch.bfloat16])


class _FirstNorm(L.Callback):
    """The module's gradient norm of the first optimizer step (what it logs and what SpikeRollback judges)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            self.norm = float(pl_module.last_grad_norm)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_fp16_mixed_logs_the_true_gradient_norm_and_clips(tmp_path, clip):
    """16-mixed with its loss scaler (torch's GradScaler on the CPU here; Lightning's 16-mixed on a GPU): the
    gradient norm is the unscaled gradient's, within fp16 rounding of the float32 run's on the same first batch
    (not 2^16 times it), and gradient_clip_val works."""
    from lightning.pytorch.plugins import MixedPrecision

    from mmf_lightning.data import ToyDataModule
    from mmf_lightning.objectives import TimeSampler

    norms = []
    for plugin in (None, MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))):
        L.seed_everything(0)
        module = MeanFlowModule(MLP(dim=2, width=32, depth=2), ModularMeanFlow("instantaneous", TimeSampler("uniform")))
        first = _FirstNorm()
        trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[LambdaScheduler(), first],
                                plugins=[plugin] if plugin else None, gradient_clip_val=clip)  # fmt: skip
        trainer.fit(module, ToyDataModule(num_train=512, batch_size=64))
        norms.append(first.norm)
    assert norms[1] == pytest.approx(norms[0], rel=0.01)
