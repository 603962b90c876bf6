"""FID with torchmetrics, with real-data statistics cached on disk.

torchmetrics' FrechetInceptionDistance keeps sums of features and of their outer products
(reduced by summation across processes), so a FID computed from N samples split over ranks
equals the single-process FID of the same N samples. The real statistics of a reference set
are computed once per (reference set contents, extractor weights), saved, and put into the
metric on rank 0 only (zeros elsewhere), so the cross-rank sum counts them once.

The cache key is what the statistics were computed from: the reference set's fingerprint
(``metrics.fingerprint``: its length and contents, or its files' names, sizes and mtimes) and
the extractor's class and weights hash (``features.extractor_id``); a changed image, another
split fraction or other weights get other statistics.
"""

import hashlib
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.image.fid import FrechetInceptionDistance

from mmf_lightning.metrics.features import extractor_id, freeze, to_uint8
from mmf_lightning.metrics.ranks import float64
from mmf_lightning.utils.console import progress
from mmf_lightning.utils.files import atomic_write
from mmf_lightning.utils.fingerprint import dataset_fingerprint

REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def make_fid(extractor: nn.Module) -> FrechetInceptionDistance:
    """A FID metric over ``extractor`` (frozen here; uint8 images in, features out); real features persist."""
    return FrechetInceptionDistance(feature=freeze(extractor), reset_real_features=False)


@torch.no_grad()
def feature_statistics(
    extractor: nn.Module, dataset: Dataset, batch_size: int, device, rank: int = 0, world_size: int = 1
) -> dict[str, torch.Tensor]:
    """Sums of features and of their outer products over this rank's share of ``dataset``
    (items {"x": image in [-1, 1]}): {"sum": (F,), "cov_sum": (F, F), "n": ()} in float64."""
    indices = list(range(rank, len(dataset), world_size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size)
    total, outer, n = None, None, 0
    for batch in progress(loader, desc="FID reference features", disable=rank != 0, leave=False):
        f = float64(extractor(to_uint8(batch["x"]).to(device)))
        total = f.sum(0) if total is None else total + f.sum(0)
        outer = f.T @ f if outer is None else outer + f.T @ f
        n += f.shape[0]
    return {"sum": total, "cov_sum": outer, "n": torch.tensor(n, device=total.device)}


def reference_key(datamodule, split: str, dataset: Dataset) -> str:
    """What identifies a reference set: the DataModule's class (a readable file name), the split,
    and the fingerprint of the set's contents."""
    return f"{type(datamodule).__name__}(split={split}, {dataset_fingerprint(dataset)})"


def cache_key(dataset_key: str, extractor: nn.Module) -> str:
    """The reference set's key and the extractor's class and weights hash."""
    return f"{dataset_key}|{extractor_id(extractor)}"


def cache_file(cache_dir: str | Path, key: str) -> Path:
    """The statistics file for ``key`` (``cache_key``): ``<DataModule>-<hash of the key>.pt``."""
    name = f"{key.split('(')[0]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    return Path(cache_dir).expanduser() / name


def cache_path(cache_dir: str | Path, dataset_key: str, extractor: nn.Module) -> Path:
    return cache_file(cache_dir, cache_key(dataset_key, extractor))


def load_statistics(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The cached statistics at ``path`` if they are there, readable and made for ``key``; else None."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: recompute and overwrite it
        warnings.warn(f"ignoring unreadable FID reference statistics {path} ({err!r}); recomputing", stacklevel=2)
        return None
    if not isinstance(saved, dict) or saved.get("key") != key or not {"sum", "cov_sum", "n"} <= saved.keys():
        return None
    return {k: saved[k] for k in ("sum", "cov_sum", "n")}


def save_statistics(path: Path, key: str, stats: dict[str, torch.Tensor]) -> None:
    """Writes the statistics under a temporary name of this process's own, then renames: two
    processes saving at once, or a crash, never leave a half-written file at ``path``."""
    with atomic_write(path) as tmp:
        torch.save({"key": key, **{k: v.detach().cpu() for k, v in stats.items()}}, tmp)


def set_real_statistics(fid: FrechetInceptionDistance, stats: dict[str, torch.Tensor] | None, rank: int) -> None:
    """Rank 0 holds the reference statistics, the other ranks zeros: their sum is counted once
    (``stats`` is only read on rank 0)."""
    for state, key in zip(REAL_STATES, ("sum", "cov_sum", "n")):
        current = getattr(fid, state)
        setattr(fid, state, stats[key].to(current) if rank == 0 else torch.zeros_like(current))
