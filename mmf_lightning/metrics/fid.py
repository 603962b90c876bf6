"""FID with torchmetrics, with real-data statistics cached on disk.

torchmetrics' FrechetInceptionDistance keeps sums of features and of their outer products
(reduced by summation across processes), so a FID computed from N samples split over ranks
equals the single-process FID of the same N samples. The real statistics of a reference split
are computed once per (dataset, split, resolution, extractor), saved, and put into the metric
on rank 0 only (zeros elsewhere), so the cross-rank sum counts them once.
"""

import hashlib
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.image.fid import FrechetInceptionDistance
from tqdm import tqdm

from mmf_lightning.metrics.features import extractor_id, freeze, to_uint8

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
    for batch in tqdm(loader, desc="FID reference features", disable=rank != 0, leave=False):
        f = extractor(to_uint8(batch["x"]).to(device)).double()
        total = f.sum(0) if total is None else total + f.sum(0)
        outer = f.T @ f if outer is None else outer + f.T @ f
        n += f.shape[0]
    return {"sum": total, "cov_sum": outer, "n": torch.tensor(n, device=device)}


def cache_path(cache_dir: str | Path, dataset_key: str, extractor: nn.Module) -> Path:
    key = f"{dataset_key}|{extractor_id(extractor)}"
    name = f"{dataset_key.split('(')[0]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    return Path(cache_dir).expanduser() / name


def set_real_statistics(fid: FrechetInceptionDistance, stats: dict[str, torch.Tensor], rank: int) -> None:
    """Rank 0 holds the reference statistics, the other ranks zeros: their sum is counted once."""
    for state, key in zip(REAL_STATES, ("sum", "cov_sum", "n")):
        value = stats[key].to(getattr(fid, state))
        setattr(fid, state, value if rank == 0 else torch.zeros_like(value))
