"""Our MeanFlow loss (ModularMeanFlow, lambda = 0, the conditional tangent) against the official one,
written out here from the MeanFlow paper's Algorithm 1 and py-meanflow's ``forward_with_loss``:

    z = (1 - t) x + t e,  v = e - x
    du/dt along (v, 0, 1), by a float64 central difference (independent of our JVP)
    u_tgt = v - (t - r) du/dt,  err = u(z, r, t) - sg(u_tgt)
    l_i = sum over dimensions of err_i^2,  w_i = sg(1 / (l_i + c)^p),  loss = mean_i(w_i l_i)

Value and gradient must agree, with and without the adaptive weight, rows with r = t included."""

import pytest
import torch

from mmf_lightning.nets import MLP
from mmf_lightning.objectives import ModularMeanFlow, TimeSampler


def official_loss(net, x, e, r, t, p: float, c: float, h: float = 1e-6) -> torch.Tensor:
    bt, br = t[:, None], r[:, None]
    z, v = (1 - bt) * x + bt * e, e - x
    with torch.no_grad():
        du_dt = (net(z + h * v, r, t + h) - net(z - h * v, r, t - h)) / (2 * h)
        u_tgt = v - (bt - br) * du_dt
    err = net(z, r, t) - u_tgt
    per_sample = err.square().sum(1)
    w = 1.0 / (per_sample.detach() + c) ** p
    return (w * per_sample).mean()


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_our_loss_is_the_official_meanflow_loss(p):
    torch.manual_seed(0)
    net = MLP(dim=2, width=32, depth=2, time_dim=16).double()
    objective = ModularMeanFlow(tangent="conditional", weighting_power=p, weighting_eps=1e-3,
                                time_sampler=TimeSampler("uniform", equal_fraction=0.25))  # fmt: skip
    n = 32
    x, e = torch.randn(n, 2, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)
    t = torch.rand(n, dtype=torch.float64)
    r = t * torch.rand(n, dtype=torch.float64)
    r[:8] = t[:8]  # flow-matching rows, as the official sampler gives a fraction of them

    ours = objective(net, x, lam=0.0, e=e, r=r, t=t).loss
    ours_grad = torch.autograd.grad(ours, list(net.parameters()))
    reference = official_loss(net, x, e, r, t, p, 1e-3)
    reference_grad = torch.autograd.grad(reference, list(net.parameters()))

    assert ours.item() == pytest.approx(reference.item(), rel=1e-7)
    for a, b in zip(ours_grad, reference_grad):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
