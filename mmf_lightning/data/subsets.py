"""Deterministic, class-balanced training subsets (paper section 5.4: 1%, 10%, 50%)."""

from collections.abc import Sequence

import torch


def check_fraction(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
    return float(fraction)


def balanced_subset(labels: Sequence[int] | torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of round(fraction * n_c) items (at least one) of every class c.

    Depends only on (labels, fraction, seed): every rank and every run picks the same items,
    and the subset for a smaller fraction is not required to lie inside a larger one.
    """
    fraction = check_fraction(fraction)
    labels = torch.as_tensor(labels)
    if fraction == 1.0:
        return torch.arange(len(labels))
    picked = []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        g = torch.Generator().manual_seed(seed * 100_003 + c)
        k = max(1, round(fraction * len(idx)))
        picked.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(picked).sort().values
