"""Training objectives in plain torch (no Lightning): modular MeanFlow and its variants,
flow matching, consistency training, (r, t) samplers and lambda schedules."""

from mmf_lightning.objectives.alphaflow import AlphaFlow
from mmf_lightning.objectives.base import Objective, ObjectiveOutput
from mmf_lightning.objectives.consistency import ConsistencyTraining
from mmf_lightning.objectives.flow_matching import FlowMatching
from mmf_lightning.objectives.jvp import u_and_dudt
from mmf_lightning.objectives.meanflow import ModularMeanFlow, sg_lambda
from mmf_lightning.objectives.paths import LinearPath, SampledPath, linear_path
from mmf_lightning.objectives.schedules import Constant, CosineWarmup, LambdaSchedule, LinearWarmup, Step
from mmf_lightning.objectives.time_sampling import TimeSampler

__all__ = [
    "AlphaFlow",
    "Constant",
    "ConsistencyTraining",
    "CosineWarmup",
    "FlowMatching",
    "LambdaSchedule",
    "LinearPath",
    "LinearWarmup",
    "ModularMeanFlow",
    "Objective",
    "ObjectiveOutput",
    "SampledPath",
    "Step",
    "TimeSampler",
    "linear_path",
    "sg_lambda",
    "u_and_dudt",
]
