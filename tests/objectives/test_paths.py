"""Paths: the sampled trajectory interpolates the true one, and the MeanFlow identity holds along
a non-linear path (the exact average velocity has zero residual)."""

import math

import pytest
import torch
from torch import nn

from mmf_lightning.objectives import FlowMatching, ModularMeanFlow, SampledPath

RATE = 2.0  # dx/ds = -x over physical time s in [0, 1]; our t = 1 - s (source x1 at t = 1)


def _decay_path(x1, k):
    """z_t = x1 exp(-RATE (1 - t)), v_t = RATE z_t, on t_k = k / K."""
    t = torch.linspace(0, 1, k + 1, dtype=torch.float64)
    states = x1[:, None] * torch.exp(-RATE * (1 - t))[None, :, None]
    return states, RATE * states


class ExactDecay(nn.Module):
    """u(z, r, t) = z (1 - exp(-RATE (t - r))) / (t - r), the flow map's average velocity."""

    num_classes = None

    def forward(self, z, r, t, y=None):
        d = (t - r)[:, None]
        safe = torch.where(d > 0, d, torch.ones_like(d))
        return torch.where(d > 0, z * (1 - torch.exp(-RATE * safe)) / safe, RATE * z)


def test_hermite_interpolation_of_a_sampled_trajectory():
    x1 = torch.randn(64, 2, dtype=torch.float64)
    path = SampledPath(*_decay_path(x1, 16))
    t = torch.rand(64, dtype=torch.float64)
    z, v = path(t)
    exact = x1 * torch.exp(-RATE * (1 - t))[:, None]
    torch.testing.assert_close(z, exact, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v, RATE * exact, rtol=1e-4, atol=1e-5)
    z_end, _ = path(torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(z_end, x1)


def test_meanflow_identity_along_a_nonlinear_path():
    x1 = torch.randn(256, 2, dtype=torch.float64)
    path = SampledPath(*_decay_path(x1, 64))
    x0 = x1 * math.exp(-RATE)
    r, t = torch.rand(256, dtype=torch.float64) * 0.5, 0.5 + torch.rand(256, dtype=torch.float64) * 0.5
    for lam in (0.0, 1.0):
        out = ModularMeanFlow()(ExactDecay(), x0, path=path, r=r, t=t, lam=lam)
        assert out.loss < 1e-10
    # the straight line between the same endpoints is a different path: the exact u is not its solution
    assert ModularMeanFlow()(ExactDecay(), x0, e=x1, r=r, t=t).loss > 1e-2
    assert FlowMatching()(ExactDecay(), x0, path=path).loss < 1e-10


def test_bad_path_shapes():
    with pytest.raises(ValueError, match=r"\(B, K \+ 1 >= 2, \*D\)"):
        SampledPath(torch.zeros(4, 1, 2), torch.zeros(4, 1, 2))
