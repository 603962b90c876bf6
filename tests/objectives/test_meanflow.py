"""The modular MeanFlow objective: JVP, closed forms, the lambda-gradient identity,
stationarity per (tangent, lambda), and bad input."""

import math

import pytest
import torch
from helpers import directional_difference

from mmf_lightning.nets import MLP
from mmf_lightning.nets.gaussian import GaussianAverageVelocity
from mmf_lightning.objectives import FlowMatching, ModularMeanFlow, TimeSampler, linear_path, u_and_dudt
from mmf_lightning.objectives import meanflow as mf

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
SIGMA = torch.tensor([0.5, 2.0], dtype=torch.float64)


def _mlp(dropout=0.0):
    return MLP(dim=2, width=32, depth=2, time_dim=16, dropout=dropout).double()


def _batch(n, seed=0, r_lt_t=True):
    g = torch.Generator().manual_seed(seed)
    x = MU + SIGMA * torch.randn(n, 2, generator=g, dtype=torch.float64)
    e = torch.randn(n, 2, generator=g, dtype=torch.float64)
    a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    r, t = torch.minimum(a, b), torch.maximum(a, b)
    if not r_lt_t:
        r = torch.where(torch.arange(n) % 2 == 0, t, r)
    return x, e, r, t


# -- du/dt ---------------------------------------------------------------------------------
@pytest.mark.parametrize("create_graph", [False, True])
def test_jvp_equals_central_difference_along_path(create_graph):
    net = _mlp()
    x, e, r, t = _batch(16)
    z, v = linear_path(x, e, t)
    u, dudt = u_and_dudt(net, z, r, t, v, create_graph=create_graph)
    h = 1e-7  # time features reach frequency 1000: keep the h^2 truncation error small
    fd = (net(z + h * v, r, t + h) - net(z - h * v, r, t - h)) / (2 * h)
    torch.testing.assert_close(dudt, fd, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(u, net(z, r, t))
    assert dudt.requires_grad == create_graph


def test_jvp_runs_in_float32_under_autocast():
    seen = []

    class Spy(MLP):
        def forward(self, z, r, t, y=None):
            seen.append((z.dtype, torch.is_autocast_enabled("cpu")))
            return super().forward(z, r, t, y)

        def jvp(self, z, *args, **kwargs):  # the MLP's explicit JVP, which u_and_dudt takes
            seen.append((z.dtype, torch.is_autocast_enabled("cpu")))
            return super().jvp(z, *args, **kwargs)

    net = Spy(dim=2, width=16, depth=1)
    z, v = torch.randn(4, 2), torch.randn(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, dudt = u_and_dudt(net, z.bfloat16(), torch.zeros(4), torch.ones(4), v.bfloat16(), create_graph=False)
    assert seen == [(torch.float32, False)]
    assert dudt.dtype == torch.float32


# -- the Gaussian closed form ------------------------------------------------------------------
def _floor(tangent, r, t):
    """E ||residual||^2 at the exact u, per sample: the noise floor (module docstring of meanflow)."""
    s = lambda tt: torch.sqrt((1 - tt[:, None]) ** 2 * SIGMA**2 + tt[:, None] ** 2)  # noqa: E731
    var_v_given_z = SIGMA**2 / s(t) ** 2  # Var(e - x | z_t), per dimension
    if tangent == "instantaneous":  # residual = v_bar - v
        return var_v_given_z.sum(1)
    return ((s(r) / s(t)) ** 2 * var_v_given_z).sum(1)  # residual = -(s_r / s_t)(v - v_bar)


@pytest.mark.parametrize("tangent", ["conditional", "instantaneous"])
def test_exact_solution_sits_at_the_noise_floor(tangent):
    x, e, r, t = _batch(200_000, seed=1)
    exact = GaussianAverageVelocity(MU, SIGMA).double()
    loss = ModularMeanFlow(tangent=tangent)(exact, x, e=e, r=r, t=t).loss
    floor = _floor(tangent, r, t).mean()
    assert abs(loss - floor) < 0.01 * floor


def _perturbed_loss_change(tangent, attr, delta, batch):
    x, e, r, t = batch
    objective = ModularMeanFlow(tangent=tangent)
    exact, wrong = GaussianAverageVelocity(MU, SIGMA).double(), GaussianAverageVelocity(MU, SIGMA).double()
    with torch.no_grad():
        getattr(wrong, attr).add_(delta)
    return objective(wrong, x, e=e, r=r, t=t).loss - objective(exact, x, e=e, r=r, t=t).loss


@pytest.mark.parametrize("attr, delta", [("mu", 0.3), ("mu", -0.3), ("log_sigma", 0.3), ("log_sigma", -0.3)])
def test_perturbing_the_exact_solution_raises_the_loss(attr, delta):
    """With the instantaneous tangent the loss is a regression of v on z: the exact u is its minimum."""
    change = _perturbed_loss_change("instantaneous", attr, delta, _batch(200_000, seed=2))
    assert change > 0.1


def test_conditional_tangent_loss_rewards_a_shrunken_map():
    """The bias of DESIGN.md 1b, visible in the loss value: with the conditional tangent a
    narrower one-step map (smaller sigma) scores lower than the exact solution."""
    batch = _batch(200_000, seed=2)
    assert _perturbed_loss_change("conditional", "log_sigma", -0.3, batch) < -1.0
    assert _perturbed_loss_change("conditional", "mu", 0.3, batch) > 0.1


# -- lambda: value, gradient identity, and the gradients themselves ---------------------------------
def _grads(net, lam, batch, tangent="conditional"):
    x, e, r, t = batch
    net.zero_grad()
    out = ModularMeanFlow(tangent=tangent)(net, x, e=e, r=r, t=t, lam=lam)
    out.loss.backward()
    return out.loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])


@pytest.mark.parametrize("tangent", ["conditional", "model", "instantaneous"])
def test_lambda_gradient_identity(tangent):
    net, batch = _mlp(), _batch(64, r_lt_t=False)
    (l0, g0), (l3, g3), (l1, g1) = (_grads(net, lam, batch, tangent) for lam in (0.0, 0.3, 1.0))
    torch.testing.assert_close(g3, 0.3 * g1 + 0.7 * g0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(l3, l0, rtol=1e-12, atol=0)  # the value does not depend on lambda
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=0)
    assert (g1 - g0).norm() > 1e-3 * g0.norm()  # lambda does change the gradient


def test_lambda_one_is_the_full_gradient_and_zero_the_stop_gradient():
    """Check both ends against finite differences of the losses they claim to differentiate."""
    net, (x, e, r, t) = _mlp(), _batch(32)
    z, v = linear_path(x, e, t)
    tr = (t - r)[:, None]
    direction = [torch.randn_like(p) for p in net.parameters()]

    def full_loss():  # || u + (t - r) du/dt - v ||^2 with du/dt a function of the parameters
        u, dudt = u_and_dudt(net, z, r, t, v, create_graph=False)
        return (u + tr * dudt - v).square().sum(1).mean()

    _, frozen = u_and_dudt(net, z, r, t, v, create_graph=False)

    def stopgrad_loss():  # du/dt frozen at the current parameters
        return (net(z, r, t) + tr * frozen - v).square().sum(1).mean()

    for lam, loss_fn in ((1.0, full_loss), (0.0, stopgrad_loss)):
        _, g = _grads(net, lam, (x, e, r, t))
        analytic = sum(
            (gi * d.flatten()).sum() for gi, d in zip(g.split([p.numel() for p in net.parameters()]), direction)
        )
        torch.testing.assert_close(
            analytic, directional_difference(loss_fn, list(net.parameters()), direction), rtol=1e-6, atol=1e-9
        )


def test_dropout_masks_agree_between_the_two_lambda_paths():
    """At lambda = 0 u and du/dt come from two passes; they must see the same dropout masks."""
    net = _mlp(dropout=0.3).train()
    batch = _batch(64)
    torch.manual_seed(5)
    l0, _ = _grads(net, 0.0, batch)
    torch.manual_seed(5)
    l1, _ = _grads(net, 1.0, batch)
    torch.testing.assert_close(l0, l1, rtol=1e-12, atol=0)


# -- which (tangent, lambda) keep the exact solution stationary (DESIGN.md section 1b) -------------
def _expected_gradient(tangent, lam, n=400_000, chunks=20):
    exact = GaussianAverageVelocity(MU, SIGMA).double()
    objective = ModularMeanFlow(tangent=tangent)
    grads = []
    for c in range(chunks):
        x, e, r, t = _batch(n // chunks, seed=100 + c)
        exact.zero_grad()
        objective(exact, x, e=e, r=r, t=t, lam=lam).loss.backward()
        grads.append(torch.cat([exact.mu.grad, exact.log_sigma.grad]))
    g = torch.stack(grads)
    return g.mean(0), g.std(0) / math.sqrt(chunks)


@pytest.mark.parametrize(
    "tangent, lam, stationary",
    [
        ("conditional", 0.0, True),
        ("conditional", 0.5, False),
        ("conditional", 1.0, False),  # the paper's recipe, literally: biased
        ("instantaneous", 0.0, True),
        ("instantaneous", 0.5, True),
        ("instantaneous", 1.0, True),
        ("model", 0.0, False),
        ("model", 1.0, False),
    ],
)
def test_stationarity_of_the_exact_solution(tangent, lam, stationary):
    mean, stderr = _expected_gradient(tangent, lam)
    z = (mean.abs() / stderr).max()
    if stationary:
        assert z < 5, f"expected gradient {mean.tolist()} is {z:.1f} standard errors from 0"
    else:
        assert z > 10, f"expected gradient {mean.tolist()} is only {z:.1f} standard errors from 0"


# -- rows with r = t, flow matching -----------------------------------------------------------------
def test_jvp_runs_only_on_rows_with_r_less_than_t(monkeypatch):
    sizes = []
    real = mf.u_and_dudt
    monkeypatch.setattr(mf, "u_and_dudt", lambda net, z, *a, **k: sizes.append(len(z)) or real(net, z, *a, **k))
    x, e, r, t = _batch(10, r_lt_t=False)
    for lam in (0.0, 1.0):
        ModularMeanFlow()(_mlp(), x, e=e, r=r, t=t, lam=lam)
    assert sizes == [int((r < t).sum())] * 2 == [5, 5]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_lambda_zero_takes_one_forward_over_the_batch_unless_dropout_needs_its_rows_apart(dropout):
    """At lambda = 0, du/dt needs no graph: without dropout, u of every row comes from one forward (with
    grad), as in flow matching; with dropout, the r < t rows keep a forward of their own, whose masks the
    JVP's replay."""
    net = _mlp(dropout=dropout).train()
    forwards = []
    net.register_forward_hook(lambda m, args, out: forwards.append((len(args[0]), torch.is_grad_enabled())))
    x, e, r, t = _batch(10, r_lt_t=False)
    ModularMeanFlow()(net, x, e=e, r=r, t=t, lam=0.0).loss.backward()
    with_grad = [n for n, grad in forwards if grad]
    assert with_grad == ([10] if dropout == 0.0 else [5, 5])


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_the_samplers_sliced_split_equals_the_masked_split(lam):
    """The sampler lays out its r = t rows first and the objective slices there: the loss and every gradient
    equal those of the same rows split by the mask of r < t (labels follow their rows)."""
    net = MLP(dim=2, width=32, depth=2, time_dim=16, num_classes=3).double()
    x, e, _, _ = _batch(12)
    y = torch.arange(12) % 4  # 3 is the null label
    objective = ModularMeanFlow("instantaneous", TimeSampler("uniform", equal_fraction=0.4))
    torch.manual_seed(1)
    r, t, k = objective.time_sampler.draw(12)
    z, v = linear_path(x, e, t)
    results = []
    for n_equal in (k, None):
        net.zero_grad()
        residual = objective.residual(net, z, r, t, v, y, lam, n_equal)
        residual.square().sum().backward()
        results.append((residual.detach(), [p.grad.clone() for p in net.parameters()]))
    assert 0 < k < 12
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    for g_sliced, g_masked in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g_sliced, g_masked, rtol=1e-10, atol=1e-13)


def test_flow_matching_is_the_r_equals_t_case():
    net, (x, e, _, t) = _mlp(), _batch(32)
    z, v = linear_path(x, e, t)
    direct = (net(z, t, t) - v).square().sum(1).mean()
    torch.testing.assert_close(ModularMeanFlow()(net, x, e=e, r=t, t=t).loss, direct)
    fm = FlowMatching(TimeSampler("uniform"))
    torch.manual_seed(3)
    t_fm = fm.time_sampler.sample_t(32).double()
    torch.manual_seed(3)
    z, v = linear_path(x, e, t_fm)
    torch.testing.assert_close(fm(net, x, e=e).loss, (net(z, t_fm, t_fm) - v).square().sum(1).mean())


# -- weighting, labels, guidance ------------------------------------------------------------------
def test_adaptive_weighting():
    net, (x, e, r, t) = _mlp(), _batch(16)
    plain = ModularMeanFlow()(net, x, e=e, r=r, t=t)
    weighted = ModularMeanFlow(weighting_power=0.75, weighting_eps=1e-3)(net, x, e=e, r=r, t=t)
    expected = (plain.per_sample / (plain.per_sample + 1e-3) ** 0.75).mean()
    torch.testing.assert_close(weighted.loss, expected)


def test_label_dropout_and_guidance_target():
    net = MLP(dim=2, width=16, depth=1, num_classes=3).double()
    x, e, _, t = _batch(4000)
    y = torch.randint(0, 3, (4000,))
    objective = ModularMeanFlow(label_dropout=0.25, guidance_scale=2.0)
    y_in, keep = objective._labels(net, y)
    assert abs((y_in == 3).double().mean() - 0.25) < 0.03
    assert torch.equal(y_in[keep], y[keep])
    z, v = linear_path(x, e, t)
    target = objective._target_velocity(net, z, t, v, keep)
    uncond = net(z, t, t, torch.full_like(y, 3)).detach()
    torch.testing.assert_close(target[keep], (2.0 * v - uncond)[keep])
    torch.testing.assert_close(target[~keep], v[~keep])


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_lambda_outside_unit_interval(lam):
    x, e, r, t = _batch(4)
    with pytest.raises(ValueError, match=f"lambda must be in \\[0, 1\\], got {lam}"):
        ModularMeanFlow()(_mlp(), x, e=e, r=r, t=t, lam=lam)


def test_r_greater_than_t():
    x, e, r, t = _batch(4)
    with pytest.raises(ValueError, match=r"0 <= r <= t <= 1, got r=0\.9, t=0\.2"):
        ModularMeanFlow()(_mlp(), x, e=e, r=torch.tensor([0.9, 0.1, 0.1, 0.1]), t=torch.tensor([0.2, 0.5, 0.5, 0.5]))


def test_bad_configuration():
    with pytest.raises(ValueError, match="tangent must be one of"):
        ModularMeanFlow(tangent="velocity")
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs a class-conditional network"):
        ModularMeanFlow(guidance_scale=2.0).check_net(_mlp())
    with pytest.raises(ValueError, match="equal_fraction must be in \\[0, 1\\], got 1.5"):
        TimeSampler(equal_fraction=1.5)


def _count_calls(net) -> list[int]:
    """A counter of the net's forward calls and of its explicit JVP's (the MLP's own: a call too)."""
    n, jvp = [0], net.jvp

    def counted_jvp(*args, **kwargs):
        n[0] += 1
        return jvp(*args, **kwargs)

    net.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    net.jvp = counted_jvp
    return n


@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("equal_fraction", [0.0, 1.0])
def test_every_branch_on_every_rank_changes_no_value_or_gradient(lam, equal_fraction):
    """``same_calls_on_every_rank`` (set for a sharded net) calls the network for an empty share of rows too: the
    calls are those of a batch with both kinds of rows, and the loss and gradients are unchanged."""
    from mmf_lightning.nets import MLP

    calls = {}
    for every in (False, True):
        torch.manual_seed(0)
        net = MLP(dim=2, width=16, depth=1)
        n = _count_calls(net)
        objective = ModularMeanFlow("instantaneous", TimeSampler("uniform", equal_fraction=equal_fraction))
        objective.same_calls_on_every_rank = every
        torch.manual_seed(1)
        loss = objective(net, torch.randn(8, 2), lam=lam).loss
        loss.backward()
        calls[every] = (n[0], loss.detach(), [p.grad.clone() for p in net.parameters()])
    assert calls[True][1] == calls[False][1]
    for a, b in zip(calls[True][2], calls[False][2]):
        assert torch.equal(a, b)
    # the empty share's calls: no r < t rows, their tangent's forward and their JVP; no r = t rows, their forward
    # (at lambda = 0 that forward is one with the other rows': no extra call)
    extra = 2 if equal_fraction == 1 else int(lam)
    assert calls[True][0] == calls[False][0] + extra


def test_the_adaptive_weight_is_detached_in_the_gradient():
    """MeanFlow's adaptive weight w = 1 / (||res||^2 + eps)^p scales each row's gradient without being
    differentiated: the loss's gradient is that of mean(stopgrad(w) * ||res||^2), not of mean(w * ||res||^2)."""
    torch.manual_seed(0)
    net = MLP(dim=2, width=16, depth=1)
    x, e = torch.randn(8, 2), torch.randn(8, 2)
    r, t = torch.rand(8) * 0.4, 0.5 + torch.rand(8) * 0.5
    objective = ModularMeanFlow("instantaneous", weighting_power=0.75)
    params = list(net.parameters())
    grads = torch.autograd.grad(objective(net, x, e=e, r=r, t=t, lam=1.0).loss, params)
    z, v = linear_path(x, e, t)
    per_sample = objective.residual(net, z, r, t, v, lam=1.0).square().sum(1)
    detached = (per_sample / (per_sample.detach() + 1e-3) ** 0.75).mean()
    for g, expected in zip(grads, torch.autograd.grad(detached, params, retain_graph=True)):
        torch.testing.assert_close(g, expected)
    differentiated = (per_sample / (per_sample + 1e-3) ** 0.75).mean()  # what a missing stopgrad would give
    assert not torch.allclose(grads[0], torch.autograd.grad(differentiated, params)[0])
