"""An MLP for the average velocity of vector data (2-D toys, ODE and control states)."""

import torch
from torch import nn

from mmf_lightning.config import RecordsInit
from mmf_lightning.nets.embeddings import ClassEmbedding, TimePairEmbedding
from mmf_lightning.nets.shapes import check_input


class MLP(RecordsInit, nn.Module):
    """``forward(z: (B, dim), r: (B,), t: (B,), y: (B,) long | None) -> (B, dim)``.

    The (t, t - r) embedding (and the class embedding) is concatenated to z and fed to a
    SiLU MLP of ``depth`` hidden layers of ``width`` units. ``time_scale``: see
    ``embeddings.SinusoidalEmbedding``.
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 256,
        depth: int = 4,
        time_dim: int = 64,
        num_classes: int | None = None,
        dropout: float = 0.0,
        time_scale: float = 10.0,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLP depth must be >= 1, got {depth}")
        self.data_shape = (dim,)
        self.num_classes = num_classes
        self.time_embed = TimePairEmbedding(time_dim, time_dim, time_scale)
        self.class_embed = ClassEmbedding(num_classes, time_dim) if num_classes else None
        layers: list[nn.Module] = []
        in_dim = dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(in_dim, width), nn.SiLU(), nn.Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        check_input(self, z, r, t, y)
        emb = self.time_embed(r, t)
        if self.class_embed is not None:
            emb = emb + self.class_embed(y)
        return self.body(torch.cat([z, emb], dim=-1))
