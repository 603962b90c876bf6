"""Schedules for lambda, the gradient-modulation weight of the modular loss (paper eq. 10-12).

Each schedule maps an optimizer step (int >= 0) to lambda in [0, 1]. Plain Python, so the
callback, the tests and a notebook plotting a curriculum all use the same code.
"""

import math
from collections.abc import Sequence

from mmf_lightning.utils.config import RecordsInit, check_count


def _check_unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_steps(name: str, value) -> int:
    """A count of steps: a whole number >= 0 (NaN, infinities and fractions are errors naming it)."""
    return check_count(name, value, 0, " of steps")


class LambdaSchedule(RecordsInit):
    """Base class: ``schedule(step) -> lambda``."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError


class Constant(LambdaSchedule):
    """lambda = value at every step (MMF with fixed lambda; 0 is MeanFlow's stop-gradient loss)."""

    def __init__(self, value: float = 0.0):
        self.value = _check_unit("Constant lambda value", value)

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class _Warmup(LambdaSchedule):
    """``delay_steps``: the ramp starts there (lambda = start before), e.g. after a flow-matching phase."""

    def __init__(self, warmup_steps: int, start: float = 0.0, end: float = 1.0, delay_steps: int = 0):
        self.warmup_steps = check_steps(f"{type(self).__name__} warmup_steps", warmup_steps)
        self.start = _check_unit(f"{type(self).__name__} start", start)
        self.end = _check_unit(f"{type(self).__name__} end", end)
        self.delay_steps = check_steps(f"{type(self).__name__} delay_steps", delay_steps)

    def progress(self, step: int) -> float:
        step = max(step - self.delay_steps, 0)
        return 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)

    def __repr__(self) -> str:
        delay = f", delay_steps={self.delay_steps}" if self.delay_steps else ""
        return f"{type(self).__name__}(warmup_steps={self.warmup_steps}, start={self.start}, end={self.end}{delay})"


class LinearWarmup(_Warmup):
    """Paper eq. 12: lambda = start + (end - start) * min(1, (step - delay_steps)^+ / warmup_steps)."""

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * self.progress(step)


class CosineWarmup(_Warmup):
    """Half-cosine ramp from start to end over warmup_steps, then constant."""

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * 0.5 * (1.0 - math.cos(math.pi * self.progress(step)))


class Step(LambdaSchedule):
    """Piecewise constant: values[0] before milestones[0], values[i] from milestones[i - 1] on."""

    def __init__(self, milestones: Sequence[int], values: Sequence[float]):
        milestones, values = list(milestones), list(values)
        if len(values) != len(milestones) + 1:
            raise ValueError(
                f"Step needs one more value than milestones, got {len(milestones)} milestones and {len(values)} values"
            )
        for m in milestones:
            check_steps("Step milestone", m)
        if milestones != sorted(set(milestones)):
            raise ValueError(f"Step milestones must be distinct, increasing and >= 0, got {milestones}")
        self.milestones = milestones
        self.values = [_check_unit("Step value", v) for v in values]

    def __call__(self, step: int) -> float:
        return self.values[sum(step >= m for m in self.milestones)]

    def __repr__(self) -> str:
        return f"Step(milestones={self.milestones}, values={self.values})"
