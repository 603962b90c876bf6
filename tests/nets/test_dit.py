"""The DiT backbone: shapes and conditioning, its JVP, and lambda's gradient through attention's share of du/dt."""

import pytest
import torch
from helpers import directional_difference

from mmf_lightning.nets import DiT
from mmf_lightning.objectives import ModularMeanFlow, linear_path, u_and_dudt


def small_dit(**kw):
    """A tiny DiT in float64 with every weight random: adaLN-Zero's zero gates would hide attention at init."""
    args = dict(in_channels=2, image_size=8, patch_size=2, width=16, depth=2, heads=2, time_dim=8) | kw
    net = DiT(**args).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def _inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, 8, 8, generator=g, dtype=torch.float64)
    r = 0.4 * torch.rand(n, generator=g, dtype=torch.float64)
    return z, r, 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)


def test_shapes_conditioning_and_the_zero_start():
    z, r, t = _inputs()
    assert DiT(in_channels=2, image_size=8, width=16, depth=1, heads=2).double()(z, r, t).abs().max() == 0
    net = small_dit(num_classes=3)
    y = torch.tensor([0, 2, 3])  # 3 is the null label
    out = net(z, r, t, y)
    assert out.shape == z.shape
    assert not torch.allclose(out, net(z, r, t, torch.tensor([1, 2, 3])))
    assert not torch.allclose(out, net(z, r - 0.1, t, y))  # depends on r, with t fixed


def test_unpatchify_inverts_the_patch_layout():
    net, (z, _, _) = small_dit(), _inputs()
    tokens = torch.nn.functional.unfold(z, 2, stride=2)  # (B, C * 2 * 2, L), channel-major
    tokens = tokens.reshape(3, 2, 2, 2, 16).permute(0, 4, 2, 3, 1).reshape(3, 16, 8)
    assert torch.equal(net.unpatchify(tokens), z)


def test_jvp_matches_a_central_difference_along_the_path():
    net, (z, r, t) = small_dit(), _inputs()
    dz = torch.randn_like(z)
    _, dudt = u_and_dudt(net, z, r, t, dz, create_graph=False)
    h = 1e-6
    fd = (net(z + h * dz, r, t + h) - net(z - h * dz, r, t - h)) / (2 * h)
    torch.testing.assert_close(dudt, fd, rtol=1e-6, atol=1e-8)


def _attention_params(net):
    return [p for name, p in net.named_parameters() if ".attn." in name]


def test_lambda_one_gradient_through_attention_equals_the_finite_difference():
    """The lambda = 1 gradient of every attention weight, through u and du/dt, against a central difference
    of || u + (t - r) du/dt - v ||^2 along a direction in the attention weights (float64); and it differs from
    the lambda = 0 gradient there, so attention's share of the lambda-gradient is not dropped."""
    net, (x, r, t) = small_dit(), _inputs(4)
    e = torch.randn_like(x)
    z, v = linear_path(x, e, t)
    tr = (t - r)[:, None, None, None]

    def loss_value():
        u, dudt = u_and_dudt(net, z, r, t, v, create_graph=False)
        return (u + tr * dudt - v).square().flatten(1).sum(1).mean()

    grads = {}
    for lam in (0.0, 1.0):
        net.zero_grad()
        ModularMeanFlow("conditional")(net, x, e=e, r=r, t=t, lam=lam).loss.backward()
        grads[lam] = [p.grad.clone() for p in _attention_params(net)]
    g = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in _attention_params(net)]
    analytic = sum((gp * d).sum() for gp, d in zip(grads[1.0], direction))
    fd = directional_difference(loss_value, _attention_params(net), direction)
    torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-9)
    difference = torch.cat([(a - b).flatten() for a, b in zip(grads[1.0], grads[0.0])]).norm()
    assert difference > 1e-3 * torch.cat([b.flatten() for b in grads[0.0]]).norm()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=9), "image_size=9 is not divisible by patch_size=2"),
        (dict(width=18, heads=2), "width must be divisible by 4"),
        (dict(width=16, heads=3), "width 16 is not divisible by heads 3"),
        (dict(depth=0), "depth must be >= 1"),
    ],
)
def test_bad_construction_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiT(**(dict(in_channels=2, image_size=8, width=16, heads=2, depth=1) | kwargs))


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"DiT expects samples of shape \(B, 2, 8, 8\), got \(3, 2, 16, 16\)"):
        small_dit()(torch.randn(3, 2, 16, 16, dtype=torch.float64), torch.zeros(3), torch.ones(3))


def test_a_class_conditional_forward_compiles_without_graph_breaks():
    """Labels are checked where they enter (the batch, on the host), not in every forward: a range check there is
    a device-to-host sync per forward on a GPU and a graph break under torch.compile."""
    torch.manual_seed(0)
    net = DiT(in_channels=1, image_size=4, patch_size=2, width=16, depth=1, heads=2, time_dim=16, num_classes=3)
    z, t = torch.randn(4, 1, 4, 4), torch.rand(4)
    explained = torch._dynamo.explain(net)(z, t * 0.5, t, torch.tensor([0, 1, 2, 3]))  # 3: the null label
    assert explained.graph_break_count == 0, explained.break_reasons


def test_a_label_out_of_range_stops_training_before_the_first_step(tmp_path):
    from helpers import quiet_trainer

    from mmf_lightning import MeanFlowModule
    from mmf_lightning.callbacks import LambdaScheduler
    from mmf_lightning.data.base import DataModuleBase, DictDataset
    from mmf_lightning.objectives import ModularMeanFlow

    class Mislabelled(DataModuleBase):  # 3 classes, and labels 3 and 4 among them
        data_shape, num_classes = (1, 4, 4), 3

        def setup(self, stage=None):
            self.train_set = self.val_set = DictDataset(x=torch.randn(8, 1, 4, 4), y=torch.arange(8) % 5)

    net = DiT(in_channels=1, image_size=4, patch_size=2, width=16, depth=1, heads=2, time_dim=16, num_classes=3)
    module = MeanFlowModule(net, ModularMeanFlow())
    before = [p.clone() for p in net.parameters()]
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[LambdaScheduler()], num_sanity_val_steps=0)
    with pytest.raises(ValueError, match=r"class label [34] outside \[0, 2\] of a network with num_classes=3"):
        trainer.fit(module, Mislabelled(batch_size=8))
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters()))


def test_jvp_safe_attention_equals_torchs_scaled_dot_product_attention():
    """The plain-op attention is softmax over the keys, scaled by 1 / sqrt(d): torch's fused kernel's value."""
    from mmf_lightning.nets.attention import jvp_safe_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(jvp_safe_attention(q, k, v), expected)


def test_a_fresh_dit_block_is_the_identity_and_a_modulated_one_is_adaln_zero_by_hand():
    """adaLN-Zero: a new block returns its input; with modulation weights it computes, for its attention and its
    MLP branch, x + g * branch(LN(x) * (1 + s) + b), with (b, s, g) the chunks of ada(c)."""
    from mmf_lightning.nets.dit import DiTBlock

    torch.manual_seed(0)
    block = DiTBlock(width=16, heads=2, mlp_ratio=2.0).double()
    x, c = torch.randn(3, 5, 16, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    assert torch.equal(block(x, c), x)
    with torch.no_grad():
        for p in block.ada.parameters():
            p.normal_(std=0.3)
    shift1, scale1, gate1, shift2, scale2, gate2 = block.ada(c).chunk(6, dim=1)

    def norm(h):  # layer norm without affine weights, eps 1e-6
        return (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)

    def attention(h):
        b, n, w = h.shape
        q, k, v = block.attn.qkv(h).reshape(b, n, 3, 2, w // 2).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w)
        return block.attn.proj(out)

    h = x + gate1[:, None] * attention(norm(x) * (1 + scale1[:, None]) + shift1[:, None])
    expected = h + gate2[:, None] * block.mlp(norm(h) * (1 + scale2[:, None]) + shift2[:, None])
    torch.testing.assert_close(block(x, c), expected)


def test_the_attention_backend_is_plain_unless_asked_and_named_when_missing():
    """The flash kernel is optional (the `flash` extra, CUDA): asking for it without the package names the extra; an
    unknown backend is named."""
    import importlib.util

    assert DiT(in_channels=1, image_size=4, patch_size=2, width=16, depth=1, heads=2).blocks[
        0
    ].attn.attend.__name__ == ("jvp_safe_attention")
    with pytest.raises(ValueError, match="attention backend must be one of .*got 'fast'"):
        DiT(in_channels=1, image_size=4, patch_size=2, width=16, depth=1, heads=2, attention="fast")
    if importlib.util.find_spec("jvp_flash_attention") is None:
        with pytest.raises(ImportError, match=r"pip install -e '\.\[flash\]'"):
            DiT(in_channels=1, image_size=4, patch_size=2, width=16, depth=1, heads=2, attention="jvp_flash")
