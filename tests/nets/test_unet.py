import pytest
import torch

from mmf_lightning.nets import MLP, UNet


def small_unet(**kw):
    args = dict(
        in_channels=3,
        image_size=16,
        channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.0,
        groups=8,
    )
    args.update(kw)
    return UNet(**args)


def test_unet_shapes_and_class_conditioning():
    net = small_unet(num_classes=10)
    z = torch.randn(4, 3, 16, 16)
    r, t = torch.rand(4) * 0.5, 0.5 + torch.rand(4) * 0.5
    y = torch.tensor([0, 3, 9, 10])  # 10 is the null label
    out = net(z, r, t, y)
    assert out.shape == z.shape
    assert not torch.allclose(out, net(z, r, t, torch.tensor([1, 3, 9, 10])))


def test_unet_depends_on_r_and_t():
    net = small_unet()
    z, t = torch.randn(2, 3, 16, 16), torch.full((2,), 0.8)
    assert not torch.allclose(net(z, t, t), net(z, t - 0.3, t))


def test_jvp_through_unet_with_attention_matches_finite_difference():
    """Attention is JVP-safe and the whole net's JVP is a directional derivative."""
    net = small_unet().double()
    z = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    r, t = torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([0.7, 0.9], dtype=torch.float64)
    dz = torch.randn_like(z)
    _, jvp = torch.func.jvp(net, (z, r, t), (dz, torch.zeros_like(r), torch.ones_like(t)))
    h = 1e-7  # the time embedding has frequencies up to 1000: keep h^2 f''' small
    fd = (net(z + h * dz, r, t + h) - net(z - h * dz, r, t - h)) / (2 * h)
    torch.testing.assert_close(jvp, fd, rtol=1e-5, atol=1e-5)


def test_lambda_one_parameter_gradient_equals_the_finite_difference():
    """The lambda = 1 gradient of every UNet weight, through u and du/dt (so through the custom JVP rules of its
    convolutions, group norms and SiLUs, and the gradient through their tangents), against a central difference of
    || u + (t - r) du/dt - v ||^2 along a random direction (float64)."""
    from helpers import directional_difference

    from mmf_lightning.objectives import ModularMeanFlow, linear_path, u_and_dudt

    torch.manual_seed(0)
    net = small_unet(channels=8, groups=4, attention_resolutions=()).double()
    with torch.no_grad():  # non-trivial norm weights, so their rules matter
        for name, p in net.named_parameters():
            if "norm" in name:
                p.normal_()
    x, e = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    r, t = torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([0.7, 0.9], dtype=torch.float64)
    z, v = linear_path(x, e, t)
    tr = (t - r)[:, None, None, None]

    def loss_value():
        u, dudt = u_and_dudt(net, z, r, t, v, create_graph=False)
        return (u + tr * dudt - v).square().flatten(1).sum(1).mean()

    params = list(net.parameters())
    net.zero_grad()
    ModularMeanFlow("conditional")(net, x, e=e, r=r, t=t, lam=1.0).loss.backward()
    g = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction))
    torch.testing.assert_close(analytic, directional_difference(loss_value, params, direction), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "net, z, match",
    [
        (
            lambda: small_unet(),
            torch.randn(2, 1, 16, 16),
            r"UNet expects samples of shape \(B, 3, 16, 16\), got \(2, 1, 16, 16\)",
        ),
        (lambda: small_unet(), torch.randn(2, 3, 32, 32), r"got \(2, 3, 32, 32\)"),
        (lambda: MLP(dim=2), torch.randn(2, 3), r"MLP expects samples of shape \(B, 2\), got \(2, 3\)"),
    ],
)
def test_shape_mismatch_is_named(net, z, match):
    with pytest.raises(ValueError, match=match):
        net()(z, torch.zeros(2), torch.ones(2))


def test_bad_construction():
    with pytest.raises(ValueError, match="image_size=30 is not divisible"):
        small_unet(image_size=30, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="num_classes"):
        small_unet(num_classes=10)(torch.randn(1, 3, 16, 16), torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="class label 11 outside"):
        small_unet(num_classes=10)(torch.randn(1, 3, 16, 16), torch.zeros(1), torch.ones(1), torch.tensor([11]))
