"""The probability path between data x (t = 0) and source e (t = 1)."""

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
