"""mmf-lightning: Modular MeanFlow and other one-step generators with PyTorch Lightning."""

from mmf_lightning.console import quiet_third_party
from mmf_lightning.module import MeanFlowModule

quiet_third_party()

__all__ = ["MeanFlowModule"]
__version__ = "0.1.0"
