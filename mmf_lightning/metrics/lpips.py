"""LPIPS (the lpips package, AlexNet variant v0.1) with its backbone weights found offline.

lpips ships its linear calibration layers but takes the AlexNet backbone from torchvision's
download; here the backbone is built untrained (``pnet_rand``) and loaded from
``resolve_weights("alexnet")``: the torch hub cache or an explicit file, never a silent download,
verified against the SHA-256 prefix torchvision's file name carries (``metrics.weights``).
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from mmf_lightning.metrics.weights import resolve_weights

MIN_SIZE = 32  # AlexNet's five stages need at least 32x32 inputs; smaller images are upsampled


class LPIPS(nn.Module):
    """Per-pair LPIPS distance of images in [-1, 1]: (N, C, H, W) x 2 -> (N,).

    Grey images are repeated to RGB; images under 32 px are upsampled bilinearly to 32
    (docs/metrics.md). Frozen, in eval mode.
    """

    def __init__(self, weights_path: str | None = None, allow_download: bool | None = None):
        super().__init__()
        import lpips

        backbone = torch.load(resolve_weights("alexnet", weights_path, allow_download), map_location="cpu")
        with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        state = {}
        for name in self.net.net.state_dict():  # "slice2.3.weight" is torchvision's "features.3.weight"
            state[name] = backbone["features." + name.split(".", 1)[1]]
        self.net.net.load_state_dict(state)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(-1, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < MIN_SIZE:
            scale = MIN_SIZE / min(x.shape[-2:])
            size = [round(s * scale) for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4:
            raise ValueError(f"LPIPS needs two image batches (N, C, H, W) of one shape, got {a.shape}, {b.shape}")
        return self.net(self._prepare(a), self._prepare(b)).flatten()
