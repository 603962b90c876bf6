"""The exact average velocity for Gaussian data, as a network (DESIGN.md section 1b).

Data N(mu, diag(sigma^2)), source N(0, I), independent coupling, linear path:
    m_t = (1 - t) mu,   s_t = sqrt((1 - t)^2 sigma^2 + t^2),
    Phi_{t->r}(z) = m_r + (s_r / s_t) (z - m_t),   u(z, r, t) = (z - Phi_{t->r}(z)) / (t - r).

Written without the 0/0 at r = t: since s_t^2 - s_r^2 = (t - r)((t + r) - sigma^2 (2 - t - r)),
    u(z, r, t) = -mu + (z - m_t) ((t + r) - sigma^2 (2 - t - r)) / (s_t (s_t + s_r)),
which at r = t is the instantaneous velocity. mu and log sigma are parameters, so tests
can ask whether the exact solution is a stationary point of a loss.
"""

import torch
from torch import nn

from mmf_lightning.nets.shapes import check_input


class GaussianAverageVelocity(nn.Module):
    """``forward(z: (B, *shape), r: (B,), t: (B,)) -> (B, *shape)``."""

    num_classes = None

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor):
        super().__init__()
        if mu.shape != sigma.shape or (sigma <= 0).any():
            raise ValueError("mu and sigma must have the same shape and sigma > 0")
        self.data_shape = tuple(mu.shape)
        self.mu = nn.Parameter(mu.clone().float())
        self.log_sigma = nn.Parameter(sigma.clone().float().log())

    def std(self, t: torch.Tensor) -> torch.Tensor:
        """s_t, (B, *shape)."""
        tt = t.reshape(-1, *([1] * len(self.data_shape)))
        return torch.sqrt((1 - tt) ** 2 * torch.exp(2 * self.log_sigma) + tt**2)

    def flow_map(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Phi_{t->r}(z)."""
        rr, tt = (s.reshape(-1, *([1] * len(self.data_shape))) for s in (r, t))
        return (1 - rr) * self.mu + self.std(r) / self.std(t) * (z - (1 - tt) * self.mu)

    def forward(self, z, r, t, y=None):
        check_input(self, z, r, t, y)
        rr, tt = (s.reshape(-1, *([1] * len(self.data_shape))) for s in (r, t))
        var = torch.exp(2 * self.log_sigma)
        s_t, s_r = self.std(t), self.std(r)
        slope = ((tt + rr) - var * (2 - tt - rr)) / (s_t * (s_t + s_r))
        return -self.mu + (z - (1 - tt) * self.mu) * slope
