"""Classifier-free guidance at sampling time: ``sampling.ClassifierFreeGuidance``, ``MeanFlowModule.guidance_scale``."""

import pytest
import torch

from mmf_lightning import MeanFlowModule, sampling
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import ModularMeanFlow


def _net():
    torch.manual_seed(0)
    net = MLP(dim=2, width=16, depth=2, time_dim=8, num_classes=3).eval()
    with torch.no_grad():  # a null label whose velocity differs clearly from every class's
        net.class_embed.embed.weight[3] += 2.0
    return net


def test_guided_velocity_is_the_null_velocity_plus_w_times_the_difference():
    net = _net()
    z, r, t, y = torch.randn(5, 2), torch.rand(5) * 0.5, 0.5 + torch.rand(5) * 0.5, torch.tensor([0, 1, 2, 0, 1])
    null = torch.full_like(y, 3)
    with torch.no_grad():
        u_y, u_null = net(z, r, t, y), net(z, r, t, null)
        assert not torch.allclose(u_y, u_null, atol=1e-3)
        for w in (0.0, 1.0, 2.5):
            torch.testing.assert_close(sampling.ClassifierFreeGuidance(net, w)(z, r, t, y), u_null + w * (u_y - u_null))
    assert sampling.guided(net, 1.0) is net


def test_module_samples_with_guidance_from_the_same_starts():
    net = _net()
    module = MeanFlowModule(net, ModularMeanFlow("instantaneous"))
    y = torch.tensor([2, 0, 1, 1])
    e, _ = module.draw_starts(4, y, torch.Generator().manual_seed(3))
    r, t = torch.zeros(4), torch.ones(4)
    with torch.no_grad():
        u_y, u_null = net(e, r, t, y), net(e, r, t, torch.full_like(y, 3))
    module.guidance_scale = 3.0
    one_step = module.sample(4, 1, y=y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(one_step, e - (u_null + 3.0 * (u_y - u_null)))  # x = e - u_w(e, 0, 1)
    states = module.trajectory_from(e, 2, y)
    assert states.shape == (3, 4, 2) and torch.isfinite(states).all()


def test_guidance_names_what_it_needs():
    with pytest.raises(ValueError, match="needs a class-conditional network; MLP has none"):
        sampling.ClassifierFreeGuidance(MLP(dim=2, width=8, depth=1), 2.0)
    with pytest.raises(ValueError, match="must be finite, got nan"):
        sampling.ClassifierFreeGuidance(_net(), float("nan"))
    with pytest.raises(ValueError, match="guidance needs labels y"):
        sampling.ClassifierFreeGuidance(_net(), 2.0)(torch.randn(2, 2), torch.zeros(2), torch.ones(2))
