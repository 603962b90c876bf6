"""Metrics in plain torch."""

from mmf_lightning.metrics.distances import sliced_wasserstein
from mmf_lightning.metrics.trajectories import trajectory_errors

__all__ = ["sliced_wasserstein", "trajectory_errors"]
