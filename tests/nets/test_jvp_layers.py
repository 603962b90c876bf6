"""The JVP-efficient layers equal their torch.nn namesakes: values, tangents, and gradients
through both (what lambda > 0 backpropagates)."""

import pytest
import torch
from helpers import directional_difference
from torch import nn

from mmf_lightning.nets import jvp_layers as J


def _value_tangent_grads(layer, x, dx):
    # the tangent input requires grad too: inside a network it depends on the layers before (lambda > 0
    # backpropagates through it), so the rule's backward with respect to dx is checked as well
    x, dx = x.clone().requires_grad_(), dx.clone().requires_grad_()
    y, dy = torch.func.jvp(layer, (x,), (dx,))
    # a loss that mixes value and tangent, so every second-order path is exercised
    loss = y.sin().sum() + (dy.square() * y).sum()
    grads = torch.autograd.grad(loss, [x, dx, *layer.parameters()])
    return y, dy, grads


def _gn():
    gn = nn.GroupNorm(4, 8).double()
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    return gn


@pytest.mark.parametrize(
    "make_ref, make_new",
    [
        (lambda: nn.Conv2d(8, 4, 3, padding=1), lambda: J.Conv2d(8, 4, 3, padding=1)),
        (lambda: nn.Conv2d(8, 4, 3, stride=2, padding=1), lambda: J.Conv2d(8, 4, 3, stride=2, padding=1)),
        (lambda: nn.Conv2d(8, 4, 1, bias=False), lambda: J.Conv2d(8, 4, 1, bias=False)),
        (_gn, lambda: J.GroupNorm(4, 8)),
        (nn.SiLU, J.SiLU),
    ],
)
def test_matches_torch_layer(make_ref, make_new):
    ref, new = make_ref().double(), make_new().double()
    new.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    dx = torch.randn_like(x)
    y1, dy1, g1 = _value_tangent_grads(ref, x, dx)
    y2, dy2, g2 = _value_tangent_grads(new, x, dx)
    torch.testing.assert_close(y2, y1)
    torch.testing.assert_close(dy2, dy1)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make", [lambda: J.Conv2d(8, 4, 3, padding=1), lambda: J.GroupNorm(4, 8)])
def test_parameter_tangents(make):
    """A JVP along the parameters (functional_call) matches a central finite difference."""
    layer = make().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    params = dict(layer.named_parameters())
    tangents = {k: torch.randn_like(v) for k, v in params.items()}
    f = lambda p: torch.func.functional_call(layer, p, (x,))  # noqa: E731
    _, jvp = torch.func.jvp(f, (params,), (tangents,))
    h = 1e-6
    plus = f({k: v + h * tangents[k] for k, v in params.items()})
    minus = f({k: v - h * tangents[k] for k, v in params.items()})
    torch.testing.assert_close(jvp, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-6)


def test_jvp_runs_one_convolution_per_layer(monkeypatch):
    """The point of the custom rule: no extra convolution with a zero weight tangent."""
    calls = []
    real = torch.nn.functional.conv2d
    monkeypatch.setattr(J.F, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = J.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.func.jvp(conv, (x,), (torch.randn_like(x),))
    assert len(calls) == 2  # primal + tangent


def test_layer_norm_gradient_through_its_tangent_equals_a_finite_difference():
    """The gradient of a loss on the tangent (what lambda > 0 backpropagates), through a linear layer and the
    plain-op LayerNorm, against a central difference in float64. (torch's fused layer_norm fails this.)"""
    torch.manual_seed(0)
    lin, ln = nn.Linear(8, 8).double(), J.LayerNorm(8).double()
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x, dx = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(3, 5, 8, dtype=torch.float64)
    params = [*lin.parameters(), *ln.parameters()]

    def loss():
        y, dy = torch.func.jvp(lambda h: ln(lin(h)), (x,), (dx,))
        return (dy.square() * y).sum()

    grads = torch.autograd.grad(loss(), params)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    torch.testing.assert_close(analytic, directional_difference(loss, params, direction), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ln(x), nn.functional.layer_norm(x, (8,), ln.weight, ln.bias, ln.eps))
