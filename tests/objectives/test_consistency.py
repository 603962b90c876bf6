"""Discrete-time consistency training: schedules, the boundary condition, the target network."""

import math

import pytest
import torch

from mmf_lightning.nets import MLP
from mmf_lightning.nets.gaussian import GaussianAverageVelocity
from mmf_lightning.objectives import ConsistencyTraining


def test_discretisation_schedule_matches_song_et_al():
    ct = ConsistencyTraining(total_steps=1000, s0=2, s1=150)
    assert ct.num_scales(0) == 2 and ct.num_scales(1000) == 151 and ct.num_scales(10**6) == 151
    k = 250
    expected = math.ceil(math.sqrt(k / 1000 * (151**2 - 4) + 4) - 1) + 1
    assert ct.num_scales(k) == expected
    ns = [ct.num_scales(k) for k in range(0, 1001, 50)]
    assert ns == sorted(ns)
    assert ct.ema_decay(0) == pytest.approx(0.9)  # mu(0) = mu0
    assert ct.ema_decay(1000) == pytest.approx(math.exp(2 * math.log(0.9) / 151))


def test_time_grid_is_the_karras_grid_on_our_path():
    ct = ConsistencyTraining()
    t = ct.times(18).double()
    assert (t[1:] > t[:-1]).all()
    sigma = t / (1 - t)  # z_t / (1 - t) = x + sigma e
    torch.testing.assert_close(sigma[[0, -1]], torch.tensor([0.002, 80.0], dtype=torch.float64), rtol=1e-5, atol=0)


def test_boundary_condition_and_exact_denoiser():
    net = MLP(dim=2, width=16, depth=1)
    z = torch.randn(8, 2)
    torch.testing.assert_close(ConsistencyTraining.denoise(net, z, torch.zeros(8)), z)
    # with the exact average velocity, f(z, t) is the flow map to t = 0
    exact = GaussianAverageVelocity(torch.tensor([1.0, -1.0]), torch.tensor([0.5, 2.0]))
    t = torch.rand(8)
    torch.testing.assert_close(ConsistencyTraining.denoise(exact, z, t), exact.flow_map(z, torch.zeros(8), t))


def test_ema_target_moves_with_decay_and_survives_state_dict():
    net = MLP(dim=2, width=16, depth=1)
    ct = ConsistencyTraining(total_steps=100, target_ema=0.9)
    out = ct(net, torch.randn(32, 2), step=0)
    out.loss.backward()
    assert ct.target is not None and not any(p.requires_grad for p in ct.target.parameters())
    before = [p.clone() for p in ct.target.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ct.on_optimizer_step(net, step=0)
    mu = ct.ema_decay(0)
    for b, p_t, p in zip(before, ct.target.parameters(), net.parameters()):
        torch.testing.assert_close(p_t, mu * b + (1 - mu) * p)
    restored = ConsistencyTraining(total_steps=100, target_ema=0.9)
    restored.load_state_dict(ct.state_dict())
    restored(net, torch.randn(4, 2), step=1)
    for a, b in zip(restored.target.parameters(), ct.target.parameters()):
        torch.testing.assert_close(a, b)


def test_stop_gradient_target_and_pseudo_huber():
    net = MLP(dim=2, width=16, depth=1)
    ct = ConsistencyTraining(target_ema=0.0, distance="pseudo_huber")
    out = ct(net, torch.randn(16, 2), step=10)
    out.loss.backward()
    assert ct.target is None and torch.isfinite(out.loss)
    c = 0.00054 * math.sqrt(2)
    torch.testing.assert_close(out.loss.detach(), (torch.sqrt(out.per_sample + c**2) - c).mean())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"s0": 5, "s1": 2}, "1 <= s0 <= s1"),
        ({"target_ema": 1.0}, r"target_ema must be in \[0, 1\)"),
        ({"sigma_min": 0.0}, "0 < sigma_min < sigma_max"),
        ({"distance": "lpips"}, "distance must be"),
    ],
)
def test_bad_configuration(kw, match):
    with pytest.raises(ValueError, match=match):
        ConsistencyTraining(**kw)


class _Recording(torch.nn.Module):
    """Wraps a net and records, per call, its times and whether autograd records the call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []
        self.data_shape, self.num_classes = net.data_shape, None

    def forward(self, z, r, t, y=None):
        self.calls.append({"z": z.detach().clone(), "r": r.clone(), "t": t.clone(), "grad": torch.is_grad_enabled()})
        return self.net(z, r, t, y)


def test_online_net_at_the_later_time_target_at_the_adjacent_earlier_one_on_the_same_noise():
    """Song et al. (2023), CT: d(f_theta(x + t_{n+1} z, t_{n+1}), f_target(x + t_n z, t_n)), the online
    net one grid point later than the target, both on the same noise. Here, on our path."""
    ct = ConsistencyTraining(total_steps=10, target_ema=0.0)
    net = _Recording(MLP(dim=2, width=16, depth=1))
    x, e = torch.randn(64, 2), torch.randn(64, 2)
    ct(net, x, e=e, step=10)
    target, online = net.calls  # the target first, without autograd; then the online net with it
    assert not target["grad"] and online["grad"]
    grid = ct.times(ct.num_scales(10)).tolist()
    for t_lo, t_hi in zip(target["t"].tolist(), online["t"].tolist()):
        i = grid.index(t_lo)
        assert grid[i + 1] == t_hi  # adjacent, online later
    for call in (target, online):
        torch.testing.assert_close(call["r"], torch.zeros(64))
        tt = call["t"][:, None]
        torch.testing.assert_close(call["z"], (1 - tt) * x + tt * e)  # the same e on both


def test_no_gradient_flows_through_the_target():
    """With target_ema = 0 the target is the online net itself: the gradient must be that of
    ||f(z_hi, t_hi) - stopgrad f(z_lo, t_lo)||^2, computed here by hand on the same draws."""
    ct = ConsistencyTraining(total_steps=10, target_ema=0.0)
    net = MLP(dim=2, width=16, depth=1)
    x, e = torch.randn(32, 2), torch.randn(32, 2)
    torch.manual_seed(5)
    ct(net, x, e=e, step=10).loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch.manual_seed(5)
    grid = ct.times(ct.num_scales(10))
    n = torch.randint(0, grid.numel() - 1, (32,))  # the same draw as the objective's
    t_lo, t_hi = grid[n], grid[n + 1]

    def f(t):
        z = (1 - t[:, None]) * x + t[:, None] * e
        return z - t[:, None] * net(z, torch.zeros_like(t), t)

    ((f(t_hi) - f(t_lo).detach()) ** 2).sum(1).mean().backward()
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(g, p.grad)


def _ct_module():
    from mmf_lightning import MeanFlowModule

    return MeanFlowModule(MLP(dim=2, width=16, depth=2, dropout=0.1), ConsistencyTraining(total_steps=10))


def test_multistep_sampling_draws_only_from_the_given_generator():
    module = _ct_module()
    state = torch.get_rng_state()
    a = module.sample(64, steps=3, generator=torch.Generator().manual_seed(1))
    b = module.sample(64, steps=3, generator=torch.Generator().manual_seed(1))
    c = module.sample(64, steps=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), state)  # sampling left torch's own stream alone
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0.1


def test_sampling_starts_at_the_largest_training_time():
    """Training never sees t above sigma_max / (1 + sigma_max) = 80/81: sampling starts there, from
    t_max e (EDM's x_T = sigma_max e on our path), and never queries the net above it."""
    module = _ct_module()
    module.net = _Recording(module.net)
    g = torch.Generator().manual_seed(0)
    e = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    states = module.sample_trajectory(16, steps=2, generator=g)
    torch.testing.assert_close(states[0], 80 / 81 * e)
    times = torch.cat([c["t"] for c in module.net.calls])
    assert times.max().item() == pytest.approx(80 / 81)
    assert module.objective.times(10).max().item() == pytest.approx(80 / 81)
