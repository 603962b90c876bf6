"""What every training objective provides: a loss, and the jump it was trained to make."""

from dataclasses import dataclass, field

import torch
from torch import nn

from mmf_lightning.objectives.paths import LinearPath, expand_like
from mmf_lightning.utils.config import RecordsInit


def default_path(x: torch.Tensor, e: torch.Tensor | None, path):
    """The batch's path, else the straight line from x to e (fresh N(0, I) noise if e is None)."""
    if path is not None:
        return path
    return LinearPath(x, torch.randn_like(x) if e is None else e)


@dataclass
class ObjectiveOutput:
    """``loss``: scalar to backpropagate. ``per_sample``: (B,) squared residual norms, detached.
    ``stats``: extra scalars worth logging (detached)."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(RecordsInit):
    """Plain-torch training objective for a velocity network ``net(z, r, t[, y])``.

    ``y`` is given only to class-conditional nets (``net.num_classes``), whose label
    ``net.num_classes`` means "no label". Subclasses implement ``__call__``; ``jump`` defaults
    to the average-velocity jump ``z_r = z_t - (t - r) u(z_t, r, t)`` of DESIGN.md section 1.
    """

    #: whether the loss reads lambda (then a LambdaScheduler callback must drive it)
    uses_lambda: bool = False
    #: the largest time the net is trained at, where sampling starts
    t_max: float = 1.0

    def __call__(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        lam: float = 0.0,
        step: int = 0,
        e: torch.Tensor | None = None,
        path=None,
    ) -> ObjectiveOutput:
        """``x``: data (B, *D); ``e``: a source sample paired with x (default: fresh N(0, I));
        ``path``: ``t -> (z_t, v_t)`` (default: the straight line from x to e, ``LinearPath``)."""
        raise NotImplementedError

    def start(self, e: torch.Tensor) -> torch.Tensor:
        """The sampler's first state, at ``t_max``, from a source sample e (B, *D): e itself."""
        return e

    def jump(
        self, net: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y=None, generator=None
    ) -> torch.Tensor:
        """Map ``z`` at times ``t`` to times ``r`` (both (B,)), the way this objective's net is meant to.
        A jump that draws noise draws it from ``generator`` (never from torch's global one)."""
        return z - expand_like(t - r, z) * net(z, r, t, y)

    def check_net(self, net: nn.Module) -> None:
        """Raise a ValueError if ``net`` cannot be trained by this objective (called before training)."""

    def on_optimizer_step(self, net: nn.Module, step: int) -> None:
        """Called after each optimizer step (e.g. to move a target network)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
