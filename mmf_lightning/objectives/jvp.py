"""u and its total derivative du/dt along a path, by forward-mode AD in float32."""

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule


def u_and_dudt(
    net: nn.Module,
    z: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    dz: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    create_graph: bool,
    step: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u(z, r, t), du/dt)`` with ``du/dt = dz . grad_z u + d_t u`` (r held fixed).

    One ``torch.func.jvp`` over the network's (z, r, t) inputs with tangent (dz, 0, 1); or, with a finite-
    difference ``step`` h, the central difference along (dz, 0, 1), for networks whose layers have no
    forward-mode rule (custom kernels, fused attention): three forwards, error O(h^2) plus rounding O(eps / h)
    (``tests/objectives/test_finite_difference.py``). Near t = 1, t + h is past the end of the path; the nets
    take any t, so the difference stays central.
    Runs with autocast off in at least float32 (float64 inputs stay float64), whatever
    the surrounding precision: a second-order quantity in bfloat16 is mostly rounding.

    ``create_graph=False`` runs under ``no_grad``: ``torch.func.jvp`` otherwise records an
    autograd graph for the tangent whenever parameters require grad, even if the tangent
    is detached later (pytorch#151782). ``create_graph=True`` keeps the graph so the
    gradient flows through du/dt. ``net`` must be the bare network, not a DDP wrapper
    (``torch.func.jvp`` fails on DistributedDataParallel, pytorch#102197).

    A network with ``has_explicit_jvp`` true (the MLP) computes the pair itself with ``net.jvp``, in
    plain ops with the same values and gradients: torch.func.jvp's per-operation overhead dominates
    small networks.
    """
    with (
        torch.autocast(device_type=z.device.type, enabled=False),
        torch.set_grad_enabled(create_graph and torch.is_grad_enabled()),
    ):
        dtype = torch.promote_types(z.dtype, torch.float32)
        z, r, t, dz = (s.to(dtype) for s in (z, r, t, dz))
        if step is not None:
            return _central_difference(net, z, r, t, dz, y, step)
        if getattr(net, "has_explicit_jvp", False) and not isinstance(net, FSDPModule):  # its hooks gather weights
            return net.jvp(z, r, t, dz, torch.zeros_like(r), torch.ones_like(t), y)
        return torch.func.jvp(
            lambda z_, r_, t_: net(z_, r_, t_, y),
            (z, r, t),
            (dz, torch.zeros_like(r), torch.ones_like(t)),
        )


class ReplayRNG:
    """Replays the RNG so passes over the same rows draw the same dropout masks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _central_difference(net, z, r, t, dz, y, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u(z, r, t), (u(z + h dz, r, t + h) - u(z - h dz, r, t - h)) / 2h)``: three forwards, each with the
    same random state (so dropout draws the same masks in all three, and in a forward the caller replays)."""
    rng = ReplayRNG(z.device)
    outputs = []
    for sign in (1.0, -1.0, 0.0):
        rng.restore()
        outputs.append(net(z + (sign * h) * dz, r, t + sign * h, y))
    ahead, behind, u = outputs
    return u, (ahead - behind) / (2 * h)
