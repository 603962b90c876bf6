"""A small CNN classifier of scikit-learn's digits whose penultimate layer is a feature space for
Frechet distances on digits: offline, seconds to train, deterministic. Numbers from it compare
runs on digits with each other; they are not FIDs in the published sense (docs/metrics.md)."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmf_lightning.utils.files import atomic_write, file_lock


class DigitsClassifier(nn.Module):
    """uint8 images (N, C, H, W), any size and C in {1, 3} -> 64-d features.

    Args:
        weights_path: trained weights; trained (about 10 s on a CPU) and saved there when missing,
            by one process (a lock beside the file): the others wait and load it.
    """

    num_features = 64

    def __init__(self, weights_path: str = "~/.cache/mmf_lightning/digits_classifier.pt"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(64, 10)
        path = Path(weights_path).expanduser()
        if not path.is_file():
            # DDP ranks, or jobs sharing the file, start together: the first trains, the others wait
            # for its file; the file is written under a name of its own and renamed into place
            with file_lock(path):
                if not path.is_file():
                    self._train()
                    with atomic_write(path) as tmp:
                        torch.save(self.state_dict(), tmp)
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-2:] != (8, 8):
            x = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
        return x * 2 - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self._prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def _train(self, epochs: int = 30) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images * (255 / 16), dtype=torch.float32).round()[:, None]
        y = torch.tensor(digits.target)
        g = torch.Generator().manual_seed(0)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            for m in self.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            opt = torch.optim.Adam(self.parameters(), lr=2e-3)
            for _ in range(epochs):
                for idx in torch.randperm(len(y), generator=g).split(64):
                    loss = F.cross_entropy(self.logits(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
