"""Batches as the dict every DataModule yields."""

from typing import Any

import torch

from mmf_lightning.objectives import SampledPath


def unpack_batch(batch: Any) -> dict:
    """Every DataModule yields a dict: "x" (data, (B, *D)), and optionally "y" (labels, (B,)),
    "e" (a source sample paired with x) and "path" / "path_velocity" (a trajectory from x at
    t = 0 to e at t = 1 on a uniform grid, (B, K + 1, *D)). A bare tensor or an (x, y) pair
    is accepted too. Returns {"x", "y", "e", "path"}, absent entries None."""
    batch = batch_dict(batch)
    path = SampledPath(batch["path"], batch["path_velocity"]) if "path" in batch else None
    return {"x": batch["x"], "y": batch.get("y"), "e": batch.get("e"), "path": path}


def batch_dict(batch: Any) -> dict:
    """A batch as the dict every DataModule yields (a bare tensor or (x,) is {"x"}, a pair {"x", "y"})."""
    if isinstance(batch, torch.Tensor):
        batch = {"x": batch}
    elif isinstance(batch, (list, tuple)) and len(batch) in (1, 2):  # TensorDataset's (x,) or (x, y)
        batch = dict(zip(("x", "y"), batch))
    if not isinstance(batch, dict) or "x" not in batch:
        kind = type(batch).__name__
        raise TypeError(f"a batch must be a dict with key 'x', a tensor, (x,) or an (x, y) pair, got {kind}")
    return batch
