"""Probability paths between data x (t = 0) and source e (t = 1): ``path(t) -> (z_t, v_t)``.

The MeanFlow identity u = v - (t - r) du/dt holds along any path, so the objectives take
the path's state z_t and velocity v_t = dz_t/dt from whichever path the batch defines:
the straight line between paired (x, e), or a sampled trajectory of known dynamics.
"""

import torch


def expand_like(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return s.reshape(s.shape[0], *([1] * (x.dim() - 1)))


def linear_path(x: torch.Tensor, e: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z_t = (1 - t) x + t e`` and its conditional velocity ``v = e - x``.

    ``x, e: (B, *D)``, ``t: (B,)`` -> ``(z_t, v)``, both ``(B, *D)``.
    """
    tt = expand_like(t, x)
    return (1 - tt) * x + tt * e, e - x


class LinearPath:
    """The straight line from x (t = 0) to e (t = 1)."""

    def __init__(self, x: torch.Tensor, e: torch.Tensor):
        self.x, self.e = x, e

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return linear_path(self.x, self.e, t)


class SampledPath:
    """A trajectory known on the grid t_k = k / K, k = 0..K: states (B, K + 1, *D) and
    velocities dz/dt (B, K + 1, *D); cubic Hermite interpolation in between (error O(K^-4)),
    whose derivative gives v_t."""

    def __init__(self, states: torch.Tensor, velocities: torch.Tensor):
        if states.shape != velocities.shape or states.dim() < 3 or states.shape[1] < 2:
            raise ValueError(
                f"path states and velocities must share a shape (B, K + 1 >= 2, *D), got {tuple(states.shape)} "
                f"and {tuple(velocities.shape)}"
            )
        self.states, self.velocities = states, velocities
        self.segments = states.shape[1] - 1

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_max = self.segments
        k = (t * k_max).floor().long().clamp(0, k_max - 1)
        rows = torch.arange(t.shape[0], device=t.device)
        p0, p1 = self.states[rows, k], self.states[rows, k + 1]
        h = 1.0 / k_max
        m0, m1 = h * self.velocities[rows, k], h * self.velocities[rows, k + 1]
        s = expand_like(t * k_max - k, p0).to(p0.dtype)
        s2, s3 = s * s, s * s * s
        z = (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (3 * s2 - 2 * s3) * p1 + (s3 - s2) * m1
        dz = (6 * s2 - 6 * s) * p0 + (3 * s2 - 4 * s + 1) * m0 + (6 * s - 6 * s2) * p1 + (3 * s2 - 2 * s) * m1
        return z, dz / h
