"""Distances between sample sets, for data where the truth is cheap to sample."""

import torch


def sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, num_projections: int = 500, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-2 distance between two equally sized sample sets ``a, b: (N, D)``.

    sqrt of the mean, over random unit directions theta, of the squared 1-D Wasserstein-2
    distance between the projections (sorted samples matched in order).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"need two (N, D) sample sets of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    theta = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, pb = (a @ theta).sort(dim=0).values, (b @ theta).sort(dim=0).values
    return (pa - pb).square().mean().sqrt().item()


def energy_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between sample sets ``a: (N, D)``,
    ``b: (M, D)`` (V-statistics, including the zero diagonal); 0 iff the laws agree, in the
    limit. Pairwise distances are computed ``chunk`` rows at a time."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, D) sample sets of one dimension, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()

    def mean_distance(x, y):
        return sum(torch.cdist(x[i : i + chunk], y).sum() for i in range(0, len(x), chunk)) / (len(x) * len(y))

    return float(2 * mean_distance(a, b) - mean_distance(a, a) - mean_distance(b, b))
