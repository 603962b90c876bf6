"""Classifier-free guidance at sampling time: ``sampling.ClassifierFreeGuidance``, ``MeanFlowModule.guidance_scale``."""

import pytest
import torch

from mmf_lightning import MeanFlowModule, sampling
from mmf_lightning.nets import MLP
from mmf_lightning.nets.embeddings import GuidedLabels
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
    with pytest.warns(UserWarning, match=r"classifier-free guidance at w = 3 with 1 step\(s\) of average velocity"):
        one_step = module.sample(4, 1, y=y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(one_step, e - (u_null + 3.0 * (u_y - u_null)))  # x = e - u_w(e, 0, 1)
    with pytest.warns(UserWarning, match=r"with 2 step\(s\)") as caught:
        states = module.trajectory_from(e, 2, y)
    assert caught[0].filename.endswith("mmf_lightning/training/module.py")  # sampling.trajectory's caller
    assert states.shape == (3, 4, 2) and torch.isfinite(states).all()


def test_few_step_classifier_free_guidance_warns_only_where_it_guides_an_average_velocity():
    import warnings

    from mmf_lightning.objectives import FlowMatching

    e, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    for objective, steps, warns in (
        (ModularMeanFlow(), 2, True),
        (ModularMeanFlow(), 3, False),
        (FlowMatching(), 1, False),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sampling.sample(sampling.guided(_net(), 2.0), objective, e, steps, y)
        assert any("classifier-free guidance" in str(w.message) for w in caught) == warns, (objective, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scale as an input: one jump of the guided net itself, no warning
        sampling.sample(sampling.guided(_guidance_input_net().float(), 2.0), ModularMeanFlow(), e, 1, y)


def test_guidance_names_what_it_needs():
    with pytest.raises(ValueError, match="needs a class-conditional network; MLP has none"):
        sampling.ClassifierFreeGuidance(MLP(dim=2, width=8, depth=1), 2.0)
    with pytest.raises(ValueError, match="must be finite, got nan"):
        sampling.ClassifierFreeGuidance(_net(), float("nan"))
    with pytest.raises(ValueError, match="guidance needs labels y"):
        sampling.ClassifierFreeGuidance(_net(), 2.0)(torch.randn(2, 2), torch.zeros(2), torch.ones(2))


# -- the guidance scale as a network input (improved MeanFlow) ------------------------------------------
def _guidance_input_net():
    torch.manual_seed(0)
    return MLP(dim=2, width=16, depth=2, time_dim=8, num_classes=3, guidance_input=True).double().eval()


def test_a_guidance_input_net_reads_the_scale_and_plain_labels_mean_scale_one():
    net = _guidance_input_net()
    z, r, t = torch.randn(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), torch.ones(4).double()
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        plain = net(z, r, t, y)
        torch.testing.assert_close(plain, net(z, r, t, GuidedLabels(y, torch.ones(4, dtype=torch.float64))))
        assert not torch.allclose(plain, net(z, r, t, GuidedLabels(y, torch.full((4,), 2.5))), atol=1e-4)


def test_sampling_a_guidance_input_net_is_one_forward_at_the_chosen_scale():
    net = _guidance_input_net()
    e, y = torch.randn(6, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    r, t = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    guided_net = sampling.guided(net, 2.0)
    assert isinstance(guided_net, sampling.GuidanceInput)
    x = sampling.sample(guided_net, ModularMeanFlow("instantaneous"), e, 1, y)
    assert len(calls) == 1  # classifier-free guidance would take a doubled batch
    with torch.no_grad():
        torch.testing.assert_close(x, e - net(e, r, t, GuidedLabels(y, torch.full((6,), 2.0, dtype=torch.float64))))


def test_training_over_a_range_of_scales_guides_each_row_with_its_own_scale():
    """Rows with r = t: the residual is u(z, t, t | y, w) - (w v + (1 - w) u(z, t, t | null, w)) on kept labels."""
    net, n = _guidance_input_net(), 512
    g = torch.Generator().manual_seed(1)
    x, e = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    objective = ModularMeanFlow("instantaneous", label_dropout=0.2, guidance_range=(1.0, 4.0))
    torch.manual_seed(5)
    out = objective(net, x, y, e=e, r=t, t=t)
    torch.manual_seed(5)  # the objective's draws, in its order: label dropout, then the scales
    keep = torch.rand(n) >= 0.2
    w = 1.0 + 3.0 * torch.rand(n)
    assert 1.0 <= w.min() and w.max() <= 4.0 and w.std() > 0.5
    y_in = torch.where(keep, y, torch.full_like(y, 3))
    z, v = (1 - t)[:, None] * x + t[:, None] * e, e - x
    with torch.no_grad():
        u = net(z, t, t, GuidedLabels(y_in, w))
        u_null = net(z, t, t, GuidedLabels(torch.full_like(y, 3), w))
    target = torch.where(keep[:, None], w[:, None].double() * v + (1 - w[:, None].double()) * u_null, v)
    torch.testing.assert_close(out.per_sample, (u - target).square().sum(1))


def test_guidance_input_errors_are_named():
    with pytest.raises(ValueError, match="guidance_input needs a class-conditional network: set num_classes"):
        MLP(guidance_input=True)
    with pytest.raises(ValueError, match="built without guidance_input"):
        _net()(torch.randn(2, 2), torch.zeros(2), torch.ones(2), GuidedLabels(torch.tensor([0, 1]), torch.ones(2)))
    with pytest.raises(ValueError, match=r"guidance_range=\[1.0, 3.0\] needs a network that takes the guidance"):
        ModularMeanFlow(guidance_range=(1.0, 3.0)).check_net(_net())
    with pytest.raises(ValueError, match=r"choose one"):
        ModularMeanFlow(guidance_scale=2.0, guidance_range=(1.0, 3.0))
    with pytest.raises(ValueError, match=r"0 <= low <= high, finite; got \[3.0, 1.0\]"):
        ModularMeanFlow(guidance_range=(3.0, 1.0))
    with pytest.raises(ValueError, match=r"guidance_range=\[1.0, 2.0\] needs labels y"):
        ModularMeanFlow(guidance_range=(1.0, 2.0))(_guidance_input_net(), torch.randn(4, 2).double())


@pytest.mark.parametrize("guidance", [{"guidance_scale": 2.0}, {"guidance_range": (1.0, 3.0)}])
def test_training_time_guidance_without_label_dropout_is_refused(guidance):
    """The guided target uses u(z, t, t | null): with label_dropout = 0 the null label never trains, so the run is
    refused before training (check_net, called by the module's setup), naming label_dropout."""
    net = _guidance_input_net() if "guidance_range" in guidance else _net()
    with pytest.raises(ValueError, match=r"label_dropout=0.0: the null label .* never trained.*set label_dropout"):
        ModularMeanFlow(**guidance).check_net(net)
    ModularMeanFlow(label_dropout=0.1, **guidance).check_net(net)
    ModularMeanFlow().check_net(net)  # no guidance: no null label needed
