"""An MLP for the average velocity of vector data (2-D toys, ODE and control states)."""

import torch
from torch import nn

from mmf_lightning.nets.embeddings import TimePairEmbedding, class_embedding
from mmf_lightning.nets.jvp_layers import draws_dropout, linear_jvp, silu_jvp
from mmf_lightning.nets.shapes import check_input
from mmf_lightning.utils.config import RecordsInit, check_count


class MLP(RecordsInit, nn.Module):
    """``forward(z: (B, dim), r: (B,), t: (B,), y: (B,) long | None) -> (B, dim)``.

    The (t, t - r) embedding (and the class embedding) is concatenated to z and fed to a
    SiLU MLP of ``depth`` hidden layers of ``width`` units. ``time_scale``: see
    ``embeddings.SinusoidalEmbedding``. ``guidance_input``: the guidance scale is an input too
    (``embeddings.GuidedLabels``; improved MeanFlow).

    ``jvp`` gives (u, du) along a tangent in plain ops, which ``objectives.u_and_dudt`` uses instead of
    ``torch.func.jvp`` whenever ``has_explicit_jvp``: on this net it is much cheaper (docs/benchmarks.md).
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
        guidance_input: bool = False,
    ):
        super().__init__()
        dim, width, depth = (
            check_count(f"MLP {k}", v, 1) for k, v in (("dim", dim), ("width", width), ("depth", depth))
        )
        time_dim = check_count("MLP time_dim", time_dim, 2)
        if not (isinstance(dropout, int | float) and 0.0 <= dropout < 1.0):
            raise ValueError(f"MLP dropout must be in [0, 1), got {dropout!r}")
        self.data_shape = (dim,)
        self.num_classes = num_classes
        self.time_embed = TimePairEmbedding(time_dim, time_dim, time_scale)
        self.class_embed = class_embedding(num_classes, time_dim, guidance_input)
        self.guidance_input = guidance_input
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

    @property
    def has_explicit_jvp(self) -> bool:
        """False while dropout is active: its masks are drawn inside torch's own layers."""
        return not draws_dropout(self)

    def jvp(self, z, r, t, dz, dr, dt, y=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u(z, r, t), du)`` along the tangent (dz, dr, dt): what ``torch.func.jvp`` of ``forward``
        gives, in plain differentiable ops. Shapes as in ``forward``; the tangents match their inputs."""
        if not self.has_explicit_jvp:
            raise RuntimeError("MLP.jvp cannot follow dropout in training mode; use torch.func.jvp")
        check_input(self, z, r, t, y)
        emb, d_emb = self.time_embed.jvp(r, t, dr, dt)
        if self.class_embed is not None:
            emb = emb + self.class_embed(y)  # labels carry no tangent
        h, dh = torch.cat([z, emb], dim=-1), torch.cat([dz, d_emb], dim=-1)
        for layer in self.body:
            if isinstance(layer, nn.Linear):
                h, dh = linear_jvp(layer, h, dh)
            elif isinstance(layer, nn.SiLU):
                h, dh = silu_jvp(h, dh)
        return h, dh
