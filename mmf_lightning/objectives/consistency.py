"""Discrete-time consistency training (Song et al. 2023, "Consistency Models", CT).

The consistency function is built from the average-velocity network so that every
objective shares one network and one sampler: f(z, t) = z - t u(z, 0, t), the jump to
t = 0, which satisfies the boundary condition f(z, 0) = z exactly.

Loss at step k: d(f_theta(z_{t_{n+1}}, t_{n+1}), f_target(z_{t_n}, t_n)) for adjacent
times of an N(k)-point grid, with the same source sample e on both. The grid is EDM's
(Karras) sigma grid mapped to our path: sigma = t / (1 - t) is the noise-to-signal ratio
of z_t / (1 - t) = x + sigma e, so t = sigma / (1 + sigma).

N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 and the target is an EMA
of the online net with decay mu(k) = exp(s0 log(mu0) / N(k)); ``target_ema=0`` uses the
online net under stop-gradient instead (improved CT, Song & Dhariwal 2023).

Sampling starts where training ends: at t_max = sigma_max / (1 + sigma_max) (80/81 with EDM's
grid), from z = t_max e, EDM's x_T = sigma_max e on our path (the data term (1 - t_max) x is
dropped, as EDM drops x against sigma_max e). The net never sees a time it was not trained at.
"""

import copy
import math
from typing import Literal

import torch
from torch import nn

from mmf_lightning.objectives.base import Objective, ObjectiveOutput, default_path
from mmf_lightning.objectives.jvp import ReplayRNG
from mmf_lightning.objectives.paths import expand_like, linear_path


class ConsistencyTraining(Objective):
    """Args:
    total_steps: K, the step at which N(k) reaches s1 + 1.
    s0, s1: initial and final number of discretisation intervals.
    sigma_min, sigma_max, rho: the Karras grid (EDM defaults).
    target_ema: mu0; 0 means stop-gradient of the online net.
    distance: "l2" (squared) or "pseudo_huber" (iCT, c = 0.00054 sqrt(dim)).
    """

    def __init__(
        self,
        total_steps: int = 800_000,
        s0: int = 2,
        s1: int = 150,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        target_ema: float = 0.9,
        distance: Literal["l2", "pseudo_huber"] = "l2",
    ):
        if total_steps < 1 or s0 < 1 or s1 < s0:
            raise ValueError(f"need total_steps >= 1 and 1 <= s0 <= s1, got {total_steps}, {s0}, {s1}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not 0.0 <= target_ema < 1.0:
            raise ValueError(f"target_ema must be in [0, 1), got {target_ema}")
        if distance not in ("l2", "pseudo_huber"):
            raise ValueError(f"distance must be 'l2' or 'pseudo_huber', got {distance!r}")
        self.total_steps, self.s0, self.s1 = total_steps, s0, s1
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.target_ema = target_ema
        self.distance = distance
        self.target: nn.Module | None = None
        self._pending_target_state: dict | None = None

    # -- schedules ------------------------------------------------------------------------
    def num_scales(self, step: int) -> int:
        k = min(max(step, 0), self.total_steps)
        n = math.sqrt(k / self.total_steps * ((self.s1 + 1) ** 2 - self.s0**2) + self.s0**2) - 1
        return math.ceil(n) + 1

    def times(self, num_scales: int, device=None) -> torch.Tensor:
        """Increasing grid t_1 < ... < t_N in (0, 1): (N,). Computed in float64 on the CPU (some
        devices have no float64), then moved."""
        i = torch.arange(num_scales, dtype=torch.float64) / (num_scales - 1)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigma = (lo + i * (hi - lo)) ** self.rho
        return (sigma / (1 + sigma)).float().to(device)

    @property
    def t_max(self) -> float:
        """The largest training time, sigma_max / (1 + sigma_max): where sampling starts."""
        return self.sigma_max / (1 + self.sigma_max)

    def ema_decay(self, step: int) -> float:
        return math.exp(self.s0 * math.log(self.target_ema) / self.num_scales(step)) if self.target_ema else 0.0

    # -- the consistency function -------------------------------------------------------------
    @staticmethod
    def denoise(net: nn.Module, z: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        return z - expand_like(t, z) * net(z, torch.zeros_like(t), t, y)

    def start(self, e: torch.Tensor) -> torch.Tensor:
        """z at t_max from a source sample: t_max e (EDM's x_T = sigma_max e)."""
        return self.t_max * e

    def jump(self, net, z, r, t, y=None, generator=None):
        """Consistency sampling: denoise to t = 0, then re-noise to r with fresh noise from ``generator``."""
        x = self.denoise(net, z, t, y)
        if not bool((r > 0).any()):
            return x
        device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
        return linear_path(x, noise, r)[0]

    def _target_net(self, net: nn.Module) -> nn.Module:
        if not self.target_ema:
            return net
        if self.target is None:
            self.target = copy.deepcopy(net).requires_grad_(False)
            if self._pending_target_state is not None:
                self.target.load_state_dict(self._pending_target_state)
                self._pending_target_state = None
        return self.target

    def __call__(self, net, x, y=None, *, lam=0.0, step=0, e=None, path=None) -> ObjectiveOutput:
        path = default_path(x, e, path)
        grid = self.times(self.num_scales(step), x.device)
        n = torch.randint(0, grid.numel() - 1, (x.shape[0],), device=x.device)
        t_lo, t_hi = grid[n], grid[n + 1]
        target_net = self._target_net(net)
        target_net.train(net.training)
        rng = ReplayRNG(x.device)  # same dropout masks for online and target (iCT)
        with torch.no_grad():
            target = self.denoise(target_net, path(t_lo)[0], t_lo, y)
        rng.restore()
        online = self.denoise(net, path(t_hi)[0], t_hi, y)
        sq = (online - target).square().flatten(1).sum(1)
        if self.distance == "pseudo_huber":
            c = 0.00054 * math.sqrt(x[0].numel())
            loss = (torch.sqrt(sq + c**2) - c).mean()
        else:
            loss = sq.mean()
        return ObjectiveOutput(loss=loss, per_sample=sq.detach(), stats={"num_scales": torch.tensor(grid.numel())})

    def on_optimizer_step(self, net: nn.Module, step: int) -> None:
        if self.target is None:
            return
        mu = self.ema_decay(step)
        with torch.no_grad():
            for p_t, p in zip(self.target.parameters(), net.parameters()):
                p_t.lerp_(p.detach(), 1 - mu)

    def state_dict(self) -> dict:
        return {} if self.target is None else {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "target" in state:
            if self.target is None:
                self._pending_target_state = state["target"]
            else:
                self.target.load_state_dict(state["target"])
