"""Feature extractors for Frechet distances, and the image conversion they expect.

Contract: an extractor is a frozen ``nn.Module`` mapping uint8 images (N, C, H, W) in [0, 255] to
features (N, F), for any H and W (torchmetrics probes it with a 299x299 image); it may carry
``num_features``. FID numbers are comparable with published ones only with ``inception_v3``
(2048-d pool3 features, resized the way torch-fidelity does, 50k samples against the training set);
numbers from any other extractor compare runs with each other, never with papers.
"""

import torch
from torch import nn

from mmf_lightning.metrics.weights import resolve_weights
from mmf_lightning.utils.fingerprint import weights_hash


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class RGB(nn.Module):
    """Repeats a single channel three times, for grey images into RGB extractors."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor
        self.num_features = getattr(extractor, "num_features", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


def inception_v3(weights_path: str | None = None, allow_download: bool | None = None) -> nn.Module:
    """InceptionV3 pool3 features (2048-d) on uint8 images, resized to 299 with TF1-style bilinear
    interpolation (``antialias=False``), as torch-fidelity and published FIDs do. The weights file is
    verified against its pinned digest before use (``metrics.weights``)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = resolve_weights("inception", weights_path, allow_download)
    net = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path), antialias=False)
    net.num_features = 2048
    return RGB(net)


def freeze(extractor: nn.Module) -> nn.Module:
    extractor.requires_grad_(False)
    extractor.eval()
    return extractor


def extractor_id(extractor: nn.Module) -> str:
    """A name for caches: the class and a hash of the weights (a retrained extractor gets new stats)."""
    inner = extractor.extractor if isinstance(extractor, RGB) else extractor
    return f"{type(inner).__name__}-{weights_hash(extractor)}"
