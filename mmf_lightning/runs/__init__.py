"""Run folders and loggers: reading runs back (configs, metrics from CSV, W&B or TensorBoard, checkpoints), the
loggers that keep a run in one folder, W&B's run file, and the run config a checkpoint carries."""

from mmf_lightning.runs.folders import Run, find_evaluations, find_runs, name_facets

__all__ = ["Run", "find_evaluations", "find_runs", "name_facets"]
