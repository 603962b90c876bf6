"""mmf-lightning: Modular MeanFlow and other one-step generators with PyTorch Lightning.

``MeanFlowModule`` is imported on first use, so that ``python -m mmf_lightning --help`` and the commands' own help
answer without importing Lightning."""

from mmf_lightning.utils.console import quiet_third_party

quiet_third_party()

__all__ = ["MeanFlowModule"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "MeanFlowModule":
        from mmf_lightning.training.module import MeanFlowModule

        return MeanFlowModule
    raise AttributeError(f"module 'mmf_lightning' has no attribute {name!r}")
