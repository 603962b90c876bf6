"""alpha-Flow: trajectory flow matching at alpha = 1, its consistency target in between, MeanFlow's residual
(scaled by alpha) as alpha -> 0, MeanFlow itself below alpha_min; no gradient through the target."""

import pytest
import torch

from mmf_lightning.nets import MLP
from mmf_lightning.objectives import AlphaFlow, ModularMeanFlow, linear_path


def _net():
    torch.manual_seed(0)
    return MLP(dim=2, width=32, depth=2, time_dim=16).double()


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, e = (torch.randn(n, 2, generator=g, dtype=torch.float64) for _ in range(2))
    a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    return x, e, torch.minimum(a, b), torch.maximum(a, b)  # every row r < t


def _residual(objective, net, lam, x, e, r, t):
    z, v = linear_path(x, e, t)
    return objective.residual(net, z, r, t, v, lam=lam)


def test_alpha_one_is_trajectory_flow_matching():
    net, (x, e, r, t) = _net(), _batch()
    z, v = linear_path(x, e, t)
    torch.testing.assert_close(_residual(AlphaFlow(), net, 0.0, x, e, r, t), net(z, r, t) - v)


@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_the_consistency_target_in_between(alpha):
    net, (x, e, r, t) = _net(), _batch()
    z, v = linear_path(x, e, t)
    d = alpha * (t - r)
    target = alpha * v + (1 - alpha) * net(z - d[:, None] * v, r, t - d)
    torch.testing.assert_close(_residual(AlphaFlow(), net, 1 - alpha, x, e, r, t), net(z, r, t) - target)


def test_as_alpha_shrinks_the_residual_over_alpha_tends_to_meanflows():
    """u - target = alpha (u + (t - r) du/dt - v) + O(alpha^2), du/dt along the conditional tangent."""
    net, (x, e, r, t) = _net(), _batch()
    meanflow = _residual(ModularMeanFlow("conditional"), net, 0.0, x, e, r, t)
    objective = AlphaFlow(alpha_min=1e-6)
    errors = [(_residual(objective, net, 1 - a, x, e, r, t) / a - meanflow).abs().max().item() for a in (1e-2, 1e-3)]
    assert errors[1] < errors[0] / 5 and errors[1] < 1e-2 * meanflow.abs().max().item()


def test_below_alpha_min_it_is_meanflow_with_the_configured_tangent():
    net, (x, e, r, t) = _net(), _batch()
    for tangent in ("conditional", "instantaneous"):
        meanflow = _residual(ModularMeanFlow(tangent), net, 0.0, x, e, r, t)
        torch.testing.assert_close(
            _residual(AlphaFlow(alpha_min=0.05, tangent=tangent), net, 0.97, x, e, r, t), meanflow
        )


def test_rows_r_less_than_t_weigh_alpha_and_no_gradient_flows_through_the_target():
    net, (x, e, r, t) = _net(), _batch()
    r = torch.where(torch.arange(64) < 16, t, r)  # a quarter of the rows are flow matching
    alpha = 0.4
    objective = AlphaFlow(weighting_power=0.0)
    out = objective(net, x, e=e, r=r, t=t, lam=1 - alpha)
    net.zero_grad()
    out.loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]

    z, v = linear_path(x, e, t)
    d = alpha * (t - r)
    with torch.no_grad():
        target = torch.where((r < t)[:, None], alpha * v + (1 - alpha) * net(z - d[:, None] * v, r, t - d), v)
    per_sample = (net(z, r, t) - target).square().sum(1)
    weight = torch.where(r < t, alpha, 1.0)
    torch.testing.assert_close(out.loss, (weight * per_sample).mean())
    net.zero_grad()
    (weight * per_sample).mean().backward()
    for got, want in zip(grads, (p.grad for p in net.parameters())):
        torch.testing.assert_close(got, want)


def test_bad_alpha_min():
    with pytest.raises(ValueError, match="alpha_min must be in \\(0, 1\\), got 1.5"):
        AlphaFlow(alpha_min=1.5)
