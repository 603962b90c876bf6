"""mmf-lightning: Modular MeanFlow and other one-step generators with PyTorch Lightning."""

from mmf_lightning.module import MeanFlowModule

__all__ = ["MeanFlowModule"]
__version__ = "0.1.0"
