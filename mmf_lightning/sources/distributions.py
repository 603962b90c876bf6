"""Low-dimensional distributions in plain torch: ``(n, generator) -> (n, 2)`` samplers, and
``sample_distribution`` by name (also the axis-aligned Gaussian)."""

import math
from collections.abc import Sequence

import torch


def checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """Uniform on the dark squares of a 4x4 board on [-2, 2]^2."""
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1)


def labelled_moons(n: int, g: torch.Generator, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half circles, centred and scaled to about [-2, 2]; label 0 the upper, 1 the lower."""
    s = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(s), 1 - torch.cos(s))
    y = torch.where(upper, torch.sin(s), 0.5 - torch.sin(s))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6
    return pts + noise * torch.randn(n, 2, generator=g), (~upper).long()


def labelled_eight_gaussians(
    n: int, g: torch.Generator, radius: float = 2.0, std: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight Gaussians on a circle of ``radius``; the label is the component (0 at angle 0, counter-clockwise)."""
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * math.pi / 4
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + std * torch.randn(n, 2, generator=g), k


def moons(n: int, g: torch.Generator) -> torch.Tensor:
    return labelled_moons(n, g)[0]


def eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    return labelled_eight_gaussians(n, g)[0]


def circles(n: int, g: torch.Generator, noise: float = 0.03) -> torch.Tensor:
    """Two concentric circles of radius 2 and 1."""
    a = torch.rand(n, generator=g) * 2 * math.pi
    r = torch.where(torch.rand(n, generator=g) < 0.5, 2.0, 1.0)
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], dim=1) + noise * torch.randn(n, 2, generator=g)


def spirals(n: int, g: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved spirals on about [-2, 2]^2."""
    s = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=1) / (1.5 * math.pi)
    return pts + noise * torch.randn(n, 2, generator=g)


DISTRIBUTIONS = {
    "checkerboard": checkerboard,
    "moons": moons,
    "eight_gaussians": eight_gaussians,
    "circles": circles,
    "spirals": spirals,
}
# distributions with a natural class label: name -> (sampler returning (x, labels), number of classes)
LABELLED = {"moons": (labelled_moons, 2), "eight_gaussians": (labelled_eight_gaussians, 8)}


def sample_distribution(
    name: str,
    n: int,
    g: torch.Generator | None = None,
    mean: Sequence[float] = (0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0),
) -> torch.Tensor:
    """n samples of a named distribution (float32, on the CPU); "gaussian" is N(mean, diag(std^2)).
    ``g=None`` draws from torch's global generator."""
    if name == "gaussian":
        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        if m.shape != s.shape or (s <= 0).any():
            raise ValueError(f"gaussian needs mean and std of one length and std > 0, got {mean}, {std}")
        return m + s * torch.randn(n, m.numel(), generator=g)
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose one of {sorted([*DISTRIBUTIONS, 'gaussian'])}")
    return DISTRIBUTIONS[name](n, g)
