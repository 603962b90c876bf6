"""Source distributions: what e is (the sample at t = 1) for training and for sampling.

The module draws e from its source when a batch brings none; ``sample`` starts from it.
A DataModule whose batches pair x with e (trajectories) draws e from a source too, and the
module checks that the two agree, so a model never samples from a different source than it
was trained on.
"""

from collections.abc import Sequence

import torch

from mmf_lightning.sources.distributions import sample_distribution
from mmf_lightning.utils.config import RecordsInit


class Source(RecordsInit):
    """``sample(n, shape, generator, device) -> (n, *shape)``."""

    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator | None = None, device=None):
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if k[0] != '_')})"


class StandardNormal(Source):
    """N(0, I), the default for images and most tasks."""

    def sample(self, n, shape, generator=None, device=None):
        device = generator.device if generator is not None else device
        return torch.randn(n, *shape, generator=generator, device=device)


class Named(Source):
    """A named low-dimensional distribution (``mmf_lightning.sources.distributions``)."""

    def __init__(self, name: str = "moons", mean: Sequence[float] = (0.0, 0.0), std: Sequence[float] = (1.0, 1.0)):
        self.name, self.mean, self.std = name, tuple(mean), tuple(std)
        sample_distribution(name, 1, None, mean, std)  # fail now on an unknown name

    def sample(self, n, shape, generator=None, device=None):
        x = sample_distribution(self.name, n, cpu_generator(generator), self.mean, self.std)
        if tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"source {self!r} draws shape {tuple(x.shape[1:])}, the data has {tuple(shape)}")
        return x.to(device)


def cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A CPU generator for samplers that draw on the CPU: ``generator`` itself, or for a device
    generator a CPU one seeded by a draw from it (the same numbers for the same device seed)."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return torch.Generator().manual_seed(int(seed))


class UniformBox(Source):
    """Uniform on [low, high]^D."""

    def __init__(self, low: float = -1.0, high: float = 1.0):
        if not low < high:
            raise ValueError(f"UniformBox needs low < high, got {low}, {high}")
        self.low, self.high = low, high

    def sample(self, n, shape, generator=None, device=None):
        device = generator.device if generator is not None else device
        return self.low + (self.high - self.low) * torch.rand(n, *shape, generator=generator, device=device)
