"""Splitting sample blocks across ranks, so that N samples drawn on any number of ranks are the
same N samples, and summing over ranks. Plain torch: Lightning and Fabric callers fill in
``all_sum`` and ``barrier``."""

from collections.abc import Callable
from dataclasses import dataclass

import torch


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Ranks:
    """This process's rank among ``world_size``, a sum over all ranks and a barrier."""

    rank: int = 0
    world_size: int = 1
    all_sum: Callable[[torch.Tensor], torch.Tensor] = _identity
    barrier: Callable[[], None] = _nothing

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def blocks(self, num_samples: int, batch_size: int) -> list[tuple[int, int]]:
        """This rank's (block index b, block size) pairs: block b holds samples
        [b * batch_size, (b + 1) * batch_size) and belongs to rank b mod world_size."""
        starts = range(0, num_samples, batch_size)
        return [
            (b, min(batch_size, num_samples - start))
            for b, start in enumerate(starts)
            if b % self.world_size == self.rank
        ]

    def seeded_blocks(self, num_samples: int, batch_size: int, seed: int, device) -> list[tuple[int, torch.Generator]]:
        """This rank's blocks as (block size, the block's generator): what every sampler here loops over."""
        return [(n, block_generator(seed, b, device)) for b, n in self.blocks(num_samples, batch_size)]


def float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 on its device, or on the CPU where the device has no float64 (Apple MPS)."""
    return (t.cpu() if t.device.type == "mps" else t).double()


def block_generator(seed: int, block: int, device) -> torch.Generator:
    """The generator of block ``block``: the same numbers on any rank, in any world size."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + block)


class Sums:
    """Sums, sums of squares and counts of per-sample values, reduced over ranks: their means
    are the same whatever the split (up to float64 summation order)."""

    def __init__(self):
        self.totals: dict[str, torch.Tensor] = {}

    def add(self, name: str, values: torch.Tensor) -> None:
        v = float64(values.detach().flatten()).cpu()
        new = torch.stack([v.sum(), v.square().sum(), torch.tensor(float(v.numel()), dtype=torch.float64)])
        self.totals[name] = self.totals[name] + new if name in self.totals else new

    def reduce(self, ranks: Ranks, names: list[str], device) -> dict[str, dict[str, float]]:
        """{name: {"mean", "std", "n"}} over all ranks. Every rank passes the same ``names``
        (a rank with no samples contributes zeros)."""
        zeros = torch.zeros(3, dtype=torch.float64)
        stacked = torch.stack([self.totals.get(name, zeros) for name in names])
        total = ranks.all_sum(stacked.to(device)).cpu() if ranks.world_size > 1 else stacked
        out = {}
        for name, (s, sq, n) in zip(names, total.tolist()):
            mean = s / n if n else float("nan")
            var = max(sq / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else float("nan")
            out[name] = {"mean": mean, "std": var**0.5, "n": int(n)}
        return out


SINGLE = Ranks()  # one process
