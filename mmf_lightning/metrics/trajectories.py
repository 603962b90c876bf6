"""Errors of a model's trajectories against ground truth on the same time grid (docs/tasks.md)."""

import torch

from mmf_lightning.metrics.ranks import float64


def trajectory_errors(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """``predicted, truth: (K + 1, N, D)``, both from t = 1 (the start) to t = 0 (the end).

    - ``path_error``: mean over the K + 1 grid times and N trajectories of the Euclidean distance.
    - ``end_error``: mean Euclidean distance of the end points (t = 0).
    - ``max_path_error``: the largest distance anywhere, the worst trajectory's worst moment.
    """
    if predicted.shape != truth.shape or predicted.dim() != 3:
        raise ValueError(
            f"need two (K + 1, N, D) arrays of one shape, got {tuple(predicted.shape)}, {tuple(truth.shape)}"
        )
    dist = (float64(predicted) - float64(truth)).norm(dim=-1)
    return {"path_error": dist.mean().item(), "end_error": dist[-1].mean().item(), "max_path_error": dist.max().item()}
