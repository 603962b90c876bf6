"""Time and class embeddings shared by the velocity networks."""

import math
from typing import NamedTuple

import torch
from torch import nn

from mmf_lightning.nets.jvp_layers import linear_jvp, silu_jvp


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar per sample: cos and sin of
    ``scale * s * f`` for frequencies f from 1 down to 1 / max_period.

    ``forward(s: (B,)) -> (B, dim)``. ``scale`` bounds how fast the features move with s,
    and so the size of d_t u that enters the MeanFlow target through the JVP. DDPM's 1000
    (timesteps) made MeanFlow's stop-gradient training diverge on 2-D data in half the
    seeds; 10 was stable and gave better samples for every objective (docs/objectives.md, Deviations).
    """

    def __init__(self, dim: int, scale: float = 10.0, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalEmbedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * scale, persistent=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        args = s.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def jvp(self, s: torch.Tensor, ds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward(s), its derivative along ds), both (B, dim)."""
        args = s.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        dargs = ds.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        cos, sin = torch.cos(args), torch.sin(args)
        return torch.cat([cos, sin], dim=-1), torch.cat([-sin * dargs, cos * dargs], dim=-1)


class TimePairEmbedding(nn.Module):
    """Embeds (r, t) as features of t and of the interval length t - r, then an MLP.

    MeanFlow conditions on (t, t - r); the network still takes (r, t), so a JVP over
    the network's (z, r, t) inputs with tangent (v, 0, 1) gets d(t - r)/dt = 1 for free.
    ``forward(r: (B,), t: (B,)) -> (B, out_dim)``.
    """

    def __init__(self, freq_dim: int, out_dim: int, time_scale: float = 10.0):
        super().__init__()
        self.t_embed = SinusoidalEmbedding(freq_dim, scale=time_scale)
        self.dt_embed = SinusoidalEmbedding(freq_dim, scale=time_scale)
        self.mlp = nn.Sequential(nn.Linear(2 * freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # in float32 under autocast: bf16 keeps 8 bits of t's features, and low-precision time embeddings are a
        # reported cause of MeanFlow-style runs spiking late in training
        with torch.autocast(device_type=t.device.type, enabled=False):
            return self.mlp(torch.cat([self.t_embed(t), self.dt_embed(t - r)], dim=-1))

    def jvp(self, r, t, dr, dt) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward(r, t), its derivative along (dr, dt)), both (B, out_dim), in plain ops."""
        a, da = self.t_embed.jvp(t, dt)
        b, db = self.dt_embed.jvp(t - r, dt - dr)
        h, dh = linear_jvp(self.mlp[0], torch.cat([a, b], dim=-1), torch.cat([da, db], dim=-1))
        h, dh = silu_jvp(h, dh)
        return linear_jvp(self.mlp[2], h, dh)


class GuidedLabels(NamedTuple):
    """The label input of a net built with ``guidance_input``: class labels (B,) long and the guidance scale
    w (B,) float the net should produce its velocity at (improved MeanFlow's guidance conditioning). A plain
    label tensor means w = 1 (no guidance)."""

    labels: torch.Tensor
    scale: torch.Tensor

    def rows(self, index) -> "GuidedLabels":
        return GuidedLabels(self.labels[index], self.scale[index])


class ClassEmbedding(nn.Module):
    """Label embedding with one extra "null" row for label dropout and guidance.

    Label ``num_classes`` (== ``null_label``) means "unconditional". With ``guidance_input`` the
    guidance scale w is an input too (``GuidedLabels``): sinusoidal features of w - 1 through an MLP, added to
    the label's embedding, so a net trained over a range of w (``ModularMeanFlow(guidance_range=...)``)
    is guided at sampling time in one forward.
    ``forward(y: (B,) long | GuidedLabels) -> (B, dim)``.
    """

    def __init__(self, num_classes: int, dim: int, guidance_input: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes + 1, dim)
        self.scale_embed = (
            nn.Sequential(SinusoidalEmbedding(dim, scale=1.0), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
            if guidance_input
            else None
        )

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, y: torch.Tensor | GuidedLabels) -> torch.Tensor:
        labels, scale = y if isinstance(y, GuidedLabels) else (y, None)
        if labels.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"class labels must be integer, got dtype {labels.dtype}")
        # labels are checked where they enter (MeanFlowModule's batches, on the host); here only when that costs
        # nothing: on an accelerator a range check is a device-to-host sync, and under torch.compile a graph break
        if labels.device.type == "cpu" and not torch.compiler.is_compiling():
            check_labels(labels, self.num_classes, null_allowed=True)
        emb = self.embed(labels)
        if self.scale_embed is None:
            if scale is not None:
                raise ValueError("got a guidance scale input, but the network was built without guidance_input")
            return emb
        if scale is None:
            scale = torch.ones(labels.shape, device=labels.device)
        with torch.autocast(device_type=labels.device.type, enabled=False):  # float32, as TimePairEmbedding
            return emb + self.scale_embed(scale - 1)


def check_labels(labels: torch.Tensor, num_classes: int, null_allowed: bool = False) -> None:
    """A ValueError naming the first label outside [0, num_classes - 1] (or up to the null label
    ``num_classes`` when ``null_allowed``). Reads the labels on the host: call it where they are there."""
    high = num_classes if null_allowed else num_classes - 1
    bad = (labels < 0) | (labels > high)
    if bad.any():
        raise ValueError(
            f"class label {labels[bad][0].item()} outside [0, {high}] of a network with num_classes={num_classes}"
            + ("" if null_allowed else "; the data's labels must be 0 .. num_classes - 1")
        )


def class_embedding(num_classes: int | None, dim: int, guidance_input: bool) -> ClassEmbedding | None:
    """A net's class embedding, or None for an unconditional net (which cannot take a guidance scale)."""
    if guidance_input and not num_classes:
        raise ValueError("guidance_input needs a class-conditional network: set num_classes")
    return ClassEmbedding(num_classes, dim, guidance_input) if num_classes else None
