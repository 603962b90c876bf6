"""The MLP's explicit JVP (plain ops) equals torch.func.jvp of its forward: values, tangents, and the
gradients through both (what lambda > 0 backpropagates); u_and_dudt takes it, and falls back to
torch.func.jvp while dropout is active."""

import pytest
import torch

from mmf_lightning.nets import MLP
from mmf_lightning.objectives import u_and_dudt


def _inputs(n=6, dim=3, g=None):
    g = g or torch.Generator().manual_seed(0)
    z, dz = torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randn(n, dim, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    dr, dt = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    return z, r, t, dz, dr, dt


def _value_tangent_grads(net, pair_fn, inputs, y):
    z, r, t, dz, dr, dt = (s.clone().requires_grad_() for s in inputs)
    u, du = pair_fn(z, r, t, dz, dr, dt)
    loss = u.sin().sum() + (du.square() * u).sum()  # mixes value and tangent: every second-order path
    grads = torch.autograd.grad(loss, [z, r, t, dz, *net.parameters()])
    return u, du, grads


@pytest.mark.parametrize("num_classes", [None, 4])
def test_mlp_explicit_jvp_equals_torch_func_jvp(num_classes):
    torch.manual_seed(0)
    net = MLP(dim=3, width=32, depth=3, time_dim=16, num_classes=num_classes, time_scale=3.0).double()
    y = torch.tensor([0, 1, 2, 3, 4, 1]) if num_classes else None  # 4 = the null label
    inputs = _inputs()

    def reference(z, r, t, dz, dr, dt):
        return torch.func.jvp(lambda a, b, c: net(a, b, c, y), (z, r, t), (dz, dr, dt))

    def explicit(z, r, t, dz, dr, dt):
        return net.jvp(z, r, t, dz, dr, dt, y)

    u_ref, du_ref, g_ref = _value_tangent_grads(net, reference, inputs, y)
    u, du, g = _value_tangent_grads(net, explicit, inputs, y)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(du, du_ref, rtol=1e-12, atol=1e-12)
    assert du.abs().max() > 1e-3  # a tangent that is there
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _CountingMLP(MLP):
    calls = 0

    def jvp(self, *args, **kwargs):
        type(self).calls += 1
        return super().jvp(*args, **kwargs)


def test_u_and_dudt_uses_it_and_falls_back_under_dropout():
    torch.manual_seed(0)
    net = _CountingMLP(dim=3, width=32, depth=2, time_dim=16, dropout=0.5).double()
    z, r, t, dz, _, _ = _inputs()
    net.eval()
    explicit = u_and_dudt(net, z, r, t, dz, create_graph=False)
    assert _CountingMLP.calls == 1
    reference = torch.func.jvp(lambda a, b, c: net(a, b, c), (z, r, t), (dz, torch.zeros_like(r), torch.ones_like(t)))
    for a, b in zip(explicit, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    net.train()  # dropout active: its masks live inside torch's layers, so torch.func.jvp runs
    assert not net.has_explicit_jvp
    torch.manual_seed(1)
    u, du = u_and_dudt(net, z, r, t, dz, create_graph=False)
    assert _CountingMLP.calls == 1
    torch.manual_seed(1)
    u_ref = net(z, r, t)
    torch.testing.assert_close(u, u_ref)  # the same dropout masks as a plain forward
    with pytest.raises(RuntimeError, match="dropout in training mode"):
        net.jvp(z, r, t, dz, torch.zeros_like(r), torch.ones_like(t))
