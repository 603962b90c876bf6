"""Sampling in plain torch: the K-step chain of an objective's jumps, from source samples to data.

Every function takes the network, the objective it was trained with (which knows its jump and
where sampling starts) and explicit starts; randomness comes only from the ``generator`` passed
in, never from torch's global generator, so samples are reproducible and drawing them leaves
training's random stream alone. ``MeanFlowModule.sample`` and its relatives, the callbacks,
``evaluate`` and the notebooks all go through here.
"""

import math
import warnings

import torch
from torch import nn

from mmf_lightning.nets.embeddings import GuidedLabels, check_labels
from mmf_lightning.objectives.base import Objective
from mmf_lightning.objectives.flow_matching import FlowMatching


class _Guided(nn.Module):
    """A class-conditional ``net`` guided at scale w: what both ways of guiding check and keep."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        num_classes = getattr(net, "num_classes", None)
        if not num_classes:
            kind = type(net).__name__
            raise ValueError(f"guidance (scale {scale}) needs a class-conditional network; {kind} has none")
        if not math.isfinite(scale):
            raise ValueError(f"the guidance scale must be finite, got {scale}")
        self.net, self.scale, self.num_classes = net, float(scale), num_classes
        self.data_shape = getattr(net, "data_shape", None)

    @staticmethod
    def _check_labels(y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("guidance needs labels y")
        return y


class ClassifierFreeGuidance(_Guided):
    """``u_w(z, r, t | y) = u(z, r, t | null) + w (u(z, r, t | y) - u(z, r, t | null))``: guidance at sampling
    time for a class-conditional net trained with label dropout (the null label is ``net.num_classes``). One
    forward on the doubled batch per jump; w = 1 is the conditional net, w = 0 the unconditional one.

    Distinct from training-time guidance (``ModularMeanFlow(guidance_scale=...)``), which bakes a fixed w into
    the target so one jump costs one forward; applied to such a net the two scales compound.
    """

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        null = torch.full_like(self._check_labels(y), self.num_classes)
        u_y, u_null = self.net(*(torch.cat([a, a]) for a in (z, r, t)), torch.cat([y, null])).chunk(2)
        return u_null + self.scale * (u_y - u_null)


class GuidanceInput(_Guided):
    """A net built with ``guidance_input`` (trained with ``ModularMeanFlow(guidance_range=...)``, improved
    MeanFlow's recipe), told to produce its velocity at guidance scale w: one forward per jump."""

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        scale = torch.full(self._check_labels(y).shape, self.scale, device=y.device)
        return self.net(z, r, t, GuidedLabels(y, scale))


def guided(net: nn.Module, scale: float = 1.0) -> nn.Module:
    """``net`` itself at scale 1; else ``GuidanceInput(net, scale)`` for a net that takes the scale as an input,
    and ``ClassifierFreeGuidance(net, scale)`` for any other class-conditional net."""
    if scale == 1.0:
        return net
    return GuidanceInput(net, scale) if getattr(net, "guidance_input", False) else ClassifierFreeGuidance(net, scale)


def time_grid(steps: int, t_max: float = 1.0, device=None) -> torch.Tensor:
    """The sampling grid t_k = t_max (1 - k / steps), k = 0..steps: (steps + 1,), from t_max down to 0."""
    if steps < 1:
        raise ValueError(f"need steps >= 1, got {steps}")
    return torch.linspace(t_max, 0.0, steps + 1, device=device)


def _states(net, objective, e, steps, y, generator):
    """Yields the chain's states: ``objective.start(e)`` at t_max, then each jump down ``time_grid``."""
    if isinstance(net, ClassifierFreeGuidance) and steps <= 2 and not isinstance(objective, FlowMatching):
        warnings.warn(
            f"classifier-free guidance at w = {net.scale:g} with {steps} step(s) of average velocity: guiding the "
            "average over a long interval is not the guided flow's average, and most samples can leave their class "
            "(docs/benchmarks.md, 'Guidance'). Take more steps, or train the scale in "
            "(ModularMeanFlow(guidance_range=...) with a net built with guidance_input=True)",
            stacklevel=4,  # the caller of sample or trajectory (past the no_grad wrapper)
        )
    grid = time_grid(steps, objective.t_max).tolist()  # Python floats: no device reads in the loop
    n = e.shape[0]
    z = objective.start(e)
    yield z
    for k in range(steps):
        t, r = (torch.full((n,), s, device=e.device) for s in grid[k : k + 2])
        z = objective.jump(net, z, r, t, y, generator=generator)
        yield z


@torch.no_grad()
def trajectory(
    net: nn.Module,
    objective: Objective,
    e: torch.Tensor,
    steps: int = 1,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Every state of the K-step chain from source samples ``e`` (N, *D): (K + 1, N, *D).

    The first state is ``objective.start(e)`` at t_max (e itself for the MeanFlow objectives,
    whose one step is x = e - u(e, 0, 1)); each next one is ``objective.jump`` to the next time
    of ``time_grid``. The last state is the sample. ``y``: labels (N,) for a class-conditional net.
    """
    return torch.stack(list(_states(net, objective, e, steps, y, generator)))


@torch.no_grad()
def sample(
    net: nn.Module,
    objective: Objective,
    e: torch.Tensor,
    steps: int = 1,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The last state of ``trajectory`` (N, *D), without keeping the others: one step costs one forward."""
    for state in _states(net, objective, e, steps, y, generator):
        last = state  # each earlier state is freed as soon as the next exists
    return last


@torch.no_grad()
def data_predictions(
    net: nn.Module, objective: Objective, states: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    """One jump from each state of a K-step chain (K + 1, N, *D) straight to t = 0:
    x_hat_k = jump(z_{t_k}, t_k -> 0) for k < K, and x_hat_K = z_K. Same shape.
    For an exact flow map every x_hat_k is the same point (docs/metrics.md, D_path)."""
    steps, n = states.shape[0] - 1, states.shape[1]
    grid = time_grid(steps, objective.t_max, states.device)
    zero = torch.zeros(n, device=states.device)
    jumps = [objective.jump(net, states[k], zero, torch.full_like(zero, grid[k]), y) for k in range(steps)]
    return torch.stack([*jumps, states[-1]])


def sample_labels(net: nn.Module, n: int, y=None, generator=None, device=None) -> torch.Tensor | None:
    """Labels (n,) for a class-conditional ``net``: ``y`` (a label, or one per sample) checked and expanded, or
    uniformly random classes from ``generator``; None for an unconditional net (which refuses labels)."""
    num_classes = getattr(net, "num_classes", None)
    if not num_classes:
        if y is not None:
            raise ValueError("labels y given but the network is unconditional")
        return None
    if y is None:  # a class-conditional net samples uniformly random classes
        drawn_on = generator.device if generator is not None else device
        return torch.randint(0, num_classes, (n,), generator=generator, device=drawn_on).to(device)
    y = torch.as_tensor(y).long()
    check_labels(y, num_classes)
    return y.to(device).expand(n)
