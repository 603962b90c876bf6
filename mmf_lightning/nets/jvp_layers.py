"""Layers whose forward-mode derivative (used by ``torch.func.jvp``) costs what it should.

PyTorch's built-in forward-AD rules are slow on the layers a UNet is made of:
``convolution``'s rule also convolves the input with a zero weight tangent (one wasted
convolution per layer), and ``group_norm``'s rule is a long chain of element-wise ops
(about 30x the forward). Each layer here is a drop-in subclass of its ``torch.nn``
namesake whose ``autograd.Function`` has an explicit ``jvp``:

- Conv2d:   d(conv(x, W)) = conv(dx, W)                   (+ conv(x, dW) + db)
- GroupNorm: d(gamma * xhat + beta) = gamma * P(x) dx       (+ xhat * dgamma + dbeta)
  where P(x) is the (symmetric) Jacobian of the normalisation, so P(x) dx is exactly
  what ``native_group_norm_backward`` computes for a gradient dx.
- SiLU:     d(silu(x)) = silu'(x) dx, with its own backward that saves only (x, dx).

The ``jvp`` bodies are plain differentiable torch ops, so with lambda > 0 autograd
backpropagates through the tangent, and the values and gradients equal those of the
built-in layers (tests/nets/test_jvp_layers.py).

Autocast: an ``autograd.Function`` is opaque to autocast, so each layer applies the cast
itself, in its module ``forward``, before the Function: when autocast is on for the input's
device, Conv2d runs in the autocast dtype (torch's policy for convolutions) and GroupNorm in
float32 (torch's CUDA policy for normalisations; applied on every device, so a CPU run
computes what a GPU run does). The casts are ordinary differentiable ``Tensor.to`` calls,
so each Function sees one dtype in forward, backward and jvp, and gradients reach float32
parameters as float32. With autocast off (as in ``objectives.jvp.u_and_dudt``, which runs
the JVP in float32) nothing is cast. float64 tensors are never cast, as in torch's autocast.
(tests/nets/test_mixed_precision.py)
"""

import torch
import torch.nn.functional as F
from torch import nn


def _autocast_dtype(x: torch.Tensor, lower_precision: bool) -> torch.dtype | None:
    """The dtype torch's autocast runs a layer in on ``x``'s device, None when autocast is off there.

    ``lower_precision``: the autocast dtype (convolutions, matmuls); otherwise float32
    (normalisations)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device) if lower_precision else torch.float32


def _autocast(dtype: torch.dtype | None, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast floating tensors other than float64 to ``dtype`` (differentiably), as autocast does."""
    if dtype is None:
        return tensors
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors
    )


class _Conv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, stride, padding):
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        ctx.set_materialize_grads(False)  # absent tangents arrive as None, not as dense zeros

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None, None, None, None
        x, weight = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]], ctx.stride, ctx.padding, (1, 1), False, (0, 0), 1, mask
        )
        return gx, gw, gb, None, None

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, _stride, _padding):
        x, weight = ctx.saved_tensors
        parts = []
        if dx is not None:
            parts.append(F.conv2d(dx, weight, None, ctx.stride, ctx.padding))
        if dweight is not None or dbias is not None:
            dw = torch.zeros_like(weight) if dweight is None else dweight
            parts.append(F.conv2d(x, dw, dbias, ctx.stride, ctx.padding))
        return sum(parts[1:], parts[0]) if parts else None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding, no dilation, no groups) with a one-convolution JVP."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("jvp_layers.Conv2d supports groups=1, dilation=1, integer zero padding only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias = _autocast(_autocast_dtype(x, lower_precision=True), x, self.weight, self.bias)
        return _Conv2dFn.apply(x, weight, bias, self.stride, self.padding)


def _group_shape(x: torch.Tensor, groups: int) -> tuple[int, int, int]:
    n, c = x.shape[:2]
    return n, c, x[0, 0].numel()


class _GroupNormFn(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, groups, eps):
        n, c, hw = _group_shape(x, groups)
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, hw, groups, eps)
        return y, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, groups, eps = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.save_for_forward(x, weight, mean, rstd)
        ctx.groups = groups
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad, _gmean, _grstd):
        if grad is None:
            return None, None, None, None, None
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, hw = _group_shape(x, ctx.groups)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(grad, x, mean, rstd, weight, n, c, hw, ctx.groups, mask)
        return gx, gw, gb, None, None

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, _groups, _eps):
        x, weight, mean, rstd = ctx.saved_tensors
        channel = _channel_shape(x)
        dy = None
        if dx is not None:
            dy = _GroupNormTangentFn.apply(x, dx, weight, mean, rstd, ctx.groups)
        if dweight is not None or dbias is not None:
            extra = torch.zeros_like(x)
            if dweight is not None:
                extra = extra + _normalized(x, mean, rstd, ctx.groups) * dweight.reshape(channel)
            if dbias is not None:
                extra = extra + dbias.reshape(channel)
            dy = extra if dy is None else dy + extra
        return dy, None, None


def _channel_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _normalized(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, groups: int) -> torch.Tensor:
    """xhat, shape of x."""
    xs = x.reshape(x.shape[0], groups, -1)
    return ((xs - mean.reshape(*xs.shape[:2], 1)) * rstd.reshape(*xs.shape[:2], 1)).reshape(x.shape)


def _project(v: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, groups: int) -> torch.Tensor:
    """P(x) v: the normalisation's Jacobian (symmetric) applied to v, via the fused backward kernel."""
    n, c, hw = _group_shape(x, groups)
    return torch.ops.aten.native_group_norm_backward(v, x, mean, rstd, None, n, c, hw, groups, [True, False, False])[0]


class _GroupNormTangentFn(torch.autograd.Function):
    """(x, dx, gamma) -> gamma * P(x) dx, saving only (x, dx) besides the group statistics.

    Backward, per group of n elements with h = gamma * grad, p = P dx, q = P h,
    f = sum(h p), Hx = sum(h xhat), b = mean(xhat dx):
        d/dx  = -(rstd / n) (xhat f + Hx p) - rstd b q
        d/ddx = q
        d/dgamma = sum over batch and pixels of grad * p
    """

    @staticmethod
    def forward(x, dx, weight, mean, rstd, groups):
        pdx = _project(dx, x, mean, rstd, groups)
        return pdx if weight is None else pdx * weight.reshape(_channel_shape(x))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dx, weight, mean, rstd, groups = inputs
        ctx.save_for_backward(x, dx, weight, mean, rstd)
        ctx.groups = groups
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None, None, None, None, None
        x, dx, weight, mean, rstd = ctx.saved_tensors
        groups = ctx.groups
        h = grad if weight is None else grad * weight.reshape(_channel_shape(x))
        p = _project(dx, x, mean, rstd, groups)
        q = _project(h, x, mean, rstd, groups)
        gx = gweight = None
        if ctx.needs_input_grad[0]:
            shape = (x.shape[0], groups, -1)
            xhat = _normalized(x, mean, rstd, groups).reshape(shape)
            hs, ps, qs = h.reshape(shape), p.reshape(shape), q.reshape(shape)
            nel = xhat.shape[-1]
            f = (hs * ps).sum(-1, keepdim=True)
            hx = (hs * xhat).sum(-1, keepdim=True)
            b = (xhat * dx.reshape(shape)).mean(-1, keepdim=True)
            r = rstd.reshape(*shape[:2], 1)
            gx = (-(r / nel) * (xhat * f + hx * ps) - r * b * qs).reshape(x.shape)
        if weight is not None and ctx.needs_input_grad[2]:
            gweight = (grad * p).transpose(0, 1).reshape(x.shape[1], -1).sum(-1)
        return gx, q if ctx.needs_input_grad[1] else None, gweight, None, None, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with a JVP through the fused normalisation kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias = _autocast(_autocast_dtype(x, lower_precision=False), x, self.weight, self.bias)
        return _GroupNormFn.apply(x, weight, bias, self.num_groups, self.eps)[0]


def _silu_grad(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


class _SiLUTangentFn(torch.autograd.Function):
    """(x, dx) -> silu'(x) * dx, saving only (x, dx) for its backward."""

    @staticmethod
    def forward(x, dx):
        return torch.ops.aten.silu_backward(dx, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        x, dx = ctx.saved_tensors
        s = torch.sigmoid(x)
        # silu''(x) = s (1 - s) (2 + x (1 - 2 s))
        gx = grad * dx * s * (1 - s) * (2 + x * (1 - 2 * s)) if ctx.needs_input_grad[0] else None
        gdx = grad * _silu_grad(x) if ctx.needs_input_grad[1] else None
        return gx, gdx


class _SiLUFn(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return F.silu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad, x)

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_tensors
        return _SiLUTangentFn.apply(x, dx)


class SiLU(nn.SiLU):
    """``nn.SiLU`` whose JVP, when differentiated, keeps two tensors instead of five."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SiLUFn.apply(x)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension in plain ops (mean, variance, rsqrt), computed in float32 at
    least, as torch's autocast runs layer norms.

    torch's fused ``layer_norm`` has a forward-mode rule whose tangent is not differentiated correctly: the
    gradient through du/dt that lambda > 0 needs comes out wrong, silently (pytorch#196700; measured on torch
    2.14 in tests/nets/test_jvp_layers.py). Plain ops have exact rules, to every order.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-len(self.normalized_shape), 0))
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = h.mean(dims, keepdim=True)
        centered = h - mean
        out = centered * torch.rsqrt(centered.square().mean(dims, keepdim=True) + self.eps)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out


# -- explicit JVPs in plain ops, for networks that propagate (value, tangent) pairs themselves ----------
# torch.func.jvp's per-operation overhead is several times a small matmul's cost, so on a small MLP the
# JVP costs several forwards. A network that carries (h, dh) through these plain, differentiable ops pays two
# matmuls per linear layer, and autograd backpropagates through both (lambda > 0). Same values and
# gradients as torch.func.jvp (tests/nets/test_explicit_jvp.py).
def linear_jvp(layer: nn.Linear, h: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer(h), d layer(h)[dh]) with the weights held fixed."""
    return F.linear(h, layer.weight, layer.bias), F.linear(dh, layer.weight)


def silu_jvp(h: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(silu(h), silu'(h) dh), silu'(h) = s (1 + h (1 - s)) with s = sigmoid(h)."""
    s = torch.sigmoid(h)
    return h * s, dh * (s * (1 + h * (1 - s)))


def draws_dropout(module: nn.Module) -> bool:
    """Whether a forward of ``module`` draws dropout masks (training mode, a dropout with p > 0 inside): then
    a JVP must run through torch's layers, on the same rows as the forward, with the random state replayed."""
    return module.training and any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())
