"""Metrics in plain torch."""

from mmf_lightning.metrics.distances import sliced_wasserstein

__all__ = ["sliced_wasserstein"]
