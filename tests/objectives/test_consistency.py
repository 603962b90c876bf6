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
