"""The Gaussian closed form (DESIGN.md section 1b) is right, so the objective tests can trust it."""

import torch

from mmf_lightning.nets.gaussian import GaussianAverageVelocity


def _net():
    return GaussianAverageVelocity(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])).double()


def test_matches_flow_map_definition():
    net = _net()
    z = torch.randn(64, 2, dtype=torch.float64)
    r, t = torch.rand(64, dtype=torch.float64) * 0.5, 0.5 + torch.rand(64, dtype=torch.float64) * 0.5
    expected = (z - net.flow_map(z, r, t)) / (t - r)[:, None]
    torch.testing.assert_close(net(z, r, t), expected)


def test_instantaneous_velocity_is_conditional_mean():
    """u(z, t, t) = E[e - x | z_t = z], the Gaussian regression of v on z_t."""
    mu, sigma = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    s2 = (1 - t) ** 2 * sigma**2 + t**2
    cov_vz = t - (1 - t) * sigma**2
    z = torch.randn(16, 2, dtype=torch.float64)
    expected = -mu + cov_vz / s2 * (z - (1 - t) * mu)
    torch.testing.assert_close(_net()(z, t.expand(16), t.expand(16)), expected)


def test_pushes_source_to_data():
    """The one-step map from t = 1 to 0 sends N(0, I) to N(mu, sigma^2)."""
    net = _net()
    e = torch.randn(200_000, 2, dtype=torch.float64)
    x = e - net(e, torch.zeros(len(e), dtype=torch.float64), torch.ones(len(e), dtype=torch.float64))
    torch.testing.assert_close(x.mean(0), net.mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(x.std(0), net.log_sigma.detach().exp(), atol=0.02, rtol=0)
