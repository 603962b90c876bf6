"""The JVP-free fallback: du/dt by a central difference along (dz, 0, 1). Its error against the exact JVP is
O(h^2) in value and in the parameter gradient (float64), small in float32 at the default-sized step, and
lambda keeps its meaning (it scales the gradient through the difference)."""

import pytest
import torch

from mmf_lightning.nets import MLP
from mmf_lightning.objectives import ModularMeanFlow, linear_path, u_and_dudt


def _net(dtype=torch.float64, dropout=0.0):
    torch.manual_seed(0)
    return MLP(dim=2, width=32, depth=2, time_dim=16, dropout=dropout).to(dtype)


def _batch(n=64, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x, e = (torch.randn(n, 2, generator=g).to(dtype) for _ in range(2))
    a, b = torch.rand(n, generator=g).to(dtype), torch.rand(n, generator=g).to(dtype)
    return x, e, torch.minimum(a, b), torch.maximum(a, b)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _loss_grads(objective, net, lam, x, e, r, t):
    net.zero_grad()
    objective(net, x, e=e, r=r, t=t, lam=lam).loss.backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def test_value_error_falls_as_the_square_of_the_step():
    net, (x, e, r, t) = _net(), _batch()
    z, v = linear_path(x, e, t)
    u, exact = u_and_dudt(net, z, r, t, v, create_graph=False)
    errors = []
    for h in (1e-2, 1e-3):
        u_fd, fd = u_and_dudt(net, z, r, t, v, create_graph=False, step=h)
        torch.testing.assert_close(u_fd, u)  # u itself is the forward at (z, r, t)
        errors.append(_rel(fd, exact))
    assert 50 < errors[0] / errors[1] < 200 and errors[1] < 1e-5, errors


def test_gradient_error_at_lambda_one_falls_as_the_square_of_the_step():
    net, batch = _net(), _batch()
    exact = _loss_grads(ModularMeanFlow("instantaneous"), net, 1.0, *batch)
    errors = [
        _rel(_loss_grads(ModularMeanFlow("instantaneous", finite_difference_step=h), net, 1.0, *batch), exact)
        for h in (1e-2, 1e-3)
    ]
    assert 50 < errors[0] / errors[1] < 200 and errors[1] < 1e-5, errors


def test_lambda_scales_the_gradient_through_the_difference():
    net, batch = _net(), _batch()
    objective = ModularMeanFlow("conditional", finite_difference_step=1e-3)
    g0, g1, g_half = (_loss_grads(objective, net, lam, *batch) for lam in (0.0, 1.0, 0.5))
    assert _rel(g1, g0) > 0.1  # the gradient through du/dt matters here
    torch.testing.assert_close(g_half, 0.5 * (g0 + g1))


def test_float32_at_the_documented_step_is_within_1e_4_of_the_jvp():
    net, (x, e, r, t) = _net(torch.float32), _batch(dtype=torch.float32)
    z, v = linear_path(x, e, t)
    _, exact = u_and_dudt(net, z, r, t, v, create_graph=False)
    _, fd = u_and_dudt(net, z, r, t, v, create_graph=False, step=1e-3)
    assert _rel(fd, exact) < 1e-4


def test_dropout_draws_the_same_masks_in_the_three_forwards():
    net, (x, e, r, t) = _net(dropout=0.3), _batch()
    net.train()
    z, v = linear_path(x, e, t)
    state = torch.get_rng_state()
    u_jvp, exact = torch.func.jvp(lambda z_, t_: net(z_, r, t_), (z, t), (v, torch.ones_like(t)))
    torch.set_rng_state(state)  # the JVP's forward drew its masks from this state; so do the three forwards
    u, fd = u_and_dudt(net, z, r, t, v, create_graph=False, step=1e-4)
    torch.testing.assert_close(u, u_jvp)
    assert _rel(fd, exact) < 1e-6


@pytest.mark.parametrize("step", [0.0, -1e-3, 0.5, float("nan")])
def test_bad_step_is_named(step):
    with pytest.raises(ValueError, match="finite_difference_step must be in \\(0, 0.5\\) or None"):
        ModularMeanFlow(finite_difference_step=step)
