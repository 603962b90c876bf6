"""alpha-Flow's curriculum from trajectory flow matching to MeanFlow (Zhang et al., arXiv 2510.20771),
in the conventions of DESIGN.md section 1.

For a row with r < t, interval d = t - r and alpha in (0, 1], the target is a consistency step of length
alpha d along the conditional path followed by the net's own average velocity over the rest:

    target = alpha v + (1 - alpha) stopgrad u(z_t - alpha d v, r, t - alpha d),
    loss   = alpha || u(z_t, r, t) - target ||^2            (rows with r = t: || u(z_t, t, t) - v ||^2).

alpha = 1 gives target v: trajectory flow matching (the average velocity regresses the instantaneous
conditional one). As alpha -> 0 the target tends to MeanFlow's v - d du/dt; below ``alpha_min`` the rows take
MeanFlow's JVP target itself (``ModularMeanFlow`` at lambda = 0). No gradient flows through any target.

The curriculum's progress p = 1 - alpha comes from the LambdaScheduler callback, as MMF's lambda does:
``LinearWarmup`` or ``CosineWarmup`` over the warm-up moves from trajectory flow matching (p = 0) to
MeanFlow (p = 1). What it shares with MMF's curriculum, and where they differ: docs/objectives.md.
"""

import torch

from mmf_lightning.objectives.meanflow import ModularMeanFlow
from mmf_lightning.objectives.paths import expand_like


class AlphaFlow(ModularMeanFlow):
    """alpha-Flow (module docstring). ``lam`` (from the LambdaScheduler) is the progress 1 - alpha.

    Args:
        alpha_min: alpha below this switches the rows r < t to MeanFlow's JVP target (alpha-Flow clamps alpha
            the same way; the value is ours).
        tangent, time_sampler, weighting_power, weighting_eps, label_dropout, guidance_scale, guidance_range:
            as ``ModularMeanFlow``; ``tangent`` is used once alpha < alpha_min. alpha-Flow uses MeanFlow's
            adaptive weight with power 1 and the conditional tangent.
    """

    def __init__(self, alpha_min: float = 0.01, weighting_power: float = 1.0, **kwargs):
        super().__init__(weighting_power=weighting_power, **kwargs)
        if not 0.0 < alpha_min < 1.0:
            raise ValueError(f"alpha_min must be in (0, 1), got {alpha_min}")
        self.alpha_min = alpha_min

    def alpha(self, lam: float) -> float:
        """alpha at curriculum progress ``lam``: 1 - lam, and 0 (MeanFlow) once below ``alpha_min``."""
        alpha = 1.0 - lam
        return 0.0 if alpha < self.alpha_min else alpha

    def row_weights(self, r: torch.Tensor, t: torch.Tensor, lam: float) -> torch.Tensor | float:
        alpha = self.alpha(lam)
        if alpha == 0.0:
            return 1.0
        return torch.where(r < t, alpha, 1.0)

    def detached_jvp_target(self, lam: float) -> bool:
        return self.alpha(lam) == 0.0  # MeanFlow's target at lambda = 0; before that, no JVP

    def _meanflow_residual(self, net, z, r, t, v, y, lam) -> torch.Tensor:
        alpha = self.alpha(lam)
        if alpha == 0.0:
            return super()._meanflow_residual(net, z, r, t, v, y, 0.0)
        target = v
        if alpha < 1.0:  # at alpha = 1 the second term has weight 0: skip its forward
            step = alpha * (t - r)
            with torch.no_grad():
                rest = net(z - expand_like(step, z) * v, r, t - step, y)
            target = alpha * v + (1.0 - alpha) * rest
        return net(z, r, t, y) - target
