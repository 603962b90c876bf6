"""Lightning callbacks: the lambda schedule, sample figures, FID, the path metrics, a
spawn-safe EMA, saving on preemption, and rolling back past loss spikes."""

from mmf_lightning.callbacks.ema import EMAWeightAveraging
from mmf_lightning.callbacks.fid import FID
from mmf_lightning.callbacks.lambda_schedule import LambdaScheduler
from mmf_lightning.callbacks.path_metrics import PathMetrics
from mmf_lightning.callbacks.preemption import SaveOnPreemption
from mmf_lightning.callbacks.sample_figures import SampleFigures
from mmf_lightning.callbacks.spike_rollback import SpikeRollback

__all__ = [
    "EMAWeightAveraging",
    "FID",
    "LambdaScheduler",
    "PathMetrics",
    "SampleFigures",
    "SaveOnPreemption",
    "SpikeRollback",
]
