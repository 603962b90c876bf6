"""Lightning callbacks: the lambda schedule, sample figures, FID and the path metrics."""

from mmf_lightning.callbacks.fid import FID
from mmf_lightning.callbacks.lambda_schedule import LambdaScheduler
from mmf_lightning.callbacks.path_metrics import PathMetrics
from mmf_lightning.callbacks.sample_figures import SampleFigures

__all__ = ["FID", "LambdaScheduler", "PathMetrics", "SampleFigures"]
