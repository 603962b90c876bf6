"""Samplers for the time pair (r, t), 0 <= r <= t <= 1."""

from typing import Literal

import torch

from mmf_lightning.utils.config import RecordsInit


class TimeSampler(RecordsInit):
    """Draws (r, t) per sample: two draws from ``distribution``, t = max, r = min.

    Then a share ``equal_fraction`` of the rows gets r = t (MeanFlow trains that share of the batch as
    plain flow matching): ``draw`` puts them first, ``equal_count(n)`` of them, so an objective splits the
    batch by slicing, with no host-device sync and static shapes; the batch's rows are in random order, so
    which rows they are does not matter. The count is ``equal_fraction * n`` rounded up or down at random
    (its expectation is exactly ``equal_fraction * n``, also for small batches).

    Args:
        distribution: "uniform" on [0, 1] or "logit_normal" (sigmoid of N(mean, std)).
        mean, std: logit-normal parameters (MeanFlow: (-0.4, 1.0) on ImageNet, (-2, 2) on CIFAR-10).
        equal_fraction: the share in [0, 1] of each batch with r = t.
    """

    def __init__(
        self,
        distribution: Literal["uniform", "logit_normal"] = "logit_normal",
        mean: float = -0.4,
        std: float = 1.0,
        equal_fraction: float = 0.75,
    ):
        if distribution not in ("uniform", "logit_normal"):
            raise ValueError(f"TimeSampler distribution must be 'uniform' or 'logit_normal', got {distribution!r}")
        if std <= 0:
            raise ValueError(f"TimeSampler std must be > 0, got {std}")
        if not 0.0 <= equal_fraction <= 1.0:
            raise ValueError(f"TimeSampler equal_fraction must be in [0, 1], got {equal_fraction}")
        self.distribution = distribution
        self.mean = mean
        self.std = std
        self.equal_fraction = equal_fraction

    def sample_t(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """n independent times from ``distribution``: (n,)."""
        if self.distribution == "uniform":
            return torch.rand(n, device=device)
        return torch.sigmoid(self.mean + self.std * torch.randn(n, device=device))

    def equal_count(self, n: int) -> int:
        """How many of n rows get r = t. Drawn on the CPU (a Python int), whatever the batch's device."""
        return min(n, int(self.equal_fraction * n + torch.rand(()).item()))

    def draw(self, n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, int]:
        """(r, t, k): times (n,) each, r = t on the first k rows and r < t on the others."""
        a, b = self.sample_t(n, device), self.sample_t(n, device)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        k = self.equal_count(n)
        return torch.cat([t[:k], r[k:]]), t, k

    def __call__(self, n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(r, t), each (n,), with r <= t (``draw`` without the count)."""
        r, t, _ = self.draw(n, device)
        return r, t

    def __repr__(self) -> str:
        return (
            f"TimeSampler({self.distribution!r}, mean={self.mean}, std={self.std}, "
            f"equal_fraction={self.equal_fraction})"
        )


def check_times(r: torch.Tensor, t: torch.Tensor) -> None:
    """Raise a ValueError naming the first pair that breaks 0 <= r <= t <= 1."""
    bad = (r < 0) | (t > 1) | (r > t)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"times must satisfy 0 <= r <= t <= 1, got r={r[i].item():.6g}, t={t[i].item():.6g}")
