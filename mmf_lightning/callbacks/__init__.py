"""Lightning callbacks: the lambda schedule and sample figures."""

from mmf_lightning.callbacks.fid import FID
from mmf_lightning.callbacks.lambda_schedule import LambdaScheduler
from mmf_lightning.callbacks.sample_figures import SampleFigures

__all__ = ["FID", "LambdaScheduler", "SampleFigures"]
