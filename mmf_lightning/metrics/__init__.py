"""Metrics in plain torch. ``sliced_wasserstein`` and ``trajectory_errors`` are imported on first use, so that a
submodule without torch (``metrics.weights``, for `download-weights --help`) stays light."""

__all__ = ["sliced_wasserstein", "trajectory_errors"]


def __getattr__(name: str):
    if name == "sliced_wasserstein":
        from mmf_lightning.metrics.distances import sliced_wasserstein

        return sliced_wasserstein
    if name == "trajectory_errors":
        from mmf_lightning.metrics.trajectories import trajectory_errors

        return trajectory_errors
    raise AttributeError(f"module 'mmf_lightning.metrics' has no attribute {name!r}")
