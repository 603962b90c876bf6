"""Modular MeanFlow (paper eq. 10-11) and MeanFlow, in the conventions of DESIGN.md section 1.

    L_lam = || u(z_t, r, t) + (t - r) SG_lam[du/dt] - v ||^2,
    SG_lam[a] = lam * a + (1 - lam) * stopgrad(a),

with du/dt the total derivative of u along the JVP tangent (dz, 0, 1). The value of the
loss does not depend on lam; its gradient is lam * (full gradient) + (1 - lam) *
(stop-gradient gradient).

The JVP tangent dz (DESIGN.md section 1b):
- "conditional":   v = e - x (MeanFlow; MMF eq. 11). Unbiased only at lam = 0.
- "model":         stopgrad u(z, r, t) (the paper's "MeanFlow (full)", eq. 9).
- "instantaneous": stopgrad u(z, t, t). A function of z alone, so the exact average
                   velocity is a stationary point for every lam (our recommendation).
"""

import math
from typing import Literal

import torch
from torch import nn

from mmf_lightning.nets.embeddings import GuidedLabels
from mmf_lightning.nets.jvp_layers import draws_dropout
from mmf_lightning.objectives.base import Objective, ObjectiveOutput, default_path
from mmf_lightning.objectives.jvp import ReplayRNG, u_and_dudt
from mmf_lightning.objectives.paths import expand_like
from mmf_lightning.objectives.schedules import check_steps
from mmf_lightning.objectives.time_sampling import TimeSampler, check_times

Tangent = Literal["conditional", "model", "instantaneous"]
TANGENTS = ("conditional", "model", "instantaneous")


def check_lambda(lam: float) -> float:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return float(lam)


def sg_lambda(a: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * a + (1 - lam) * stopgrad(a)``, written so its value is exactly ``a``'s."""
    frozen = a.detach()
    return frozen if lam == 0.0 else frozen + lam * (a - frozen)


def adaptive_weight(per_sample: torch.Tensor, power: float, eps: float) -> torch.Tensor:
    """MeanFlow's adaptive loss weight ``1 / (||residual||^2 + eps)^power`` (stop-gradient)."""
    if power == 0.0:
        return torch.ones_like(per_sample)
    return 1.0 / (per_sample.detach() + eps) ** power


class ModularMeanFlow(Objective):
    """The lambda-modulated MeanFlow loss; lambda comes from the LambdaScheduler callback.

    Args:
        tangent: JVP tangent, "conditional" | "model" | "instantaneous" (module docstring).
        time_sampler: draws (r, t); rows with r = t are plain flow matching and skip the JVP.
        weighting_power, weighting_eps: MeanFlow's adaptive weight 1 / (||res||^2 + eps)^p; p = 0 is plain L2.
        label_dropout: with a class-conditional net, the probability of replacing a label by
            the null label ``net.num_classes`` (for guidance).
        guidance_scale: MeanFlow's training-time guidance w: the target velocity becomes
            w * v + (1 - w) * stopgrad u(z, t, t | null) on labelled rows; 1 disables it.
        guidance_range: improved MeanFlow's guidance as an input (arXiv 2512.02012): each labelled row draws
            its own w uniformly from [low, high], the net (built with ``guidance_input``) is told w
            (``GuidedLabels``), and the target is guided with that w. Sampling then picks w in one forward
            (``sampling.guided``). Exclusive with ``guidance_scale``.
        finite_difference_step: None (the default) computes du/dt exactly, by forward-mode AD; a step h > 0
            takes the central difference along (dz, 0, 1) instead, for networks with layers that have no
            forward-mode rule (``objectives.jvp.u_and_dudt``). lambda keeps its meaning: it scales the gradient
            through the difference. h = 1e-3 in float32 is within about 1e-4 of the JVP (docs/objectives.md).
        flow_matching_steps: the first this many steps train every row at r = t (plain flow matching, no JVP):
            a warm start inside the run, u(z, t, t) learning the instantaneous velocity before the average one
            (configs/recipes/warm_start_checkerboard.yaml; delay the lambda schedule to match).
    """

    uses_lambda = True
    #: run every branch of the step (the r = t rows' forward, the r < t rows' JVP) even when a batch has no rows
    #: for it, so that every rank calls the network the same number of times whatever its rows drew: a sharded
    #: network (FSDP2) gathers its weights in every call, a collective the other ranks must join. Set by
    #: ``MeanFlowModule`` when it shards the network.
    same_calls_on_every_rank: bool = False

    def __init__(
        self,
        tangent: Tangent = "conditional",
        time_sampler: TimeSampler | None = None,
        weighting_power: float = 0.0,
        weighting_eps: float = 1e-3,
        label_dropout: float = 0.0,
        guidance_scale: float = 1.0,
        guidance_range: tuple[float, float] | None = None,
        finite_difference_step: float | None = None,
        flow_matching_steps: int = 0,
    ):
        if tangent not in TANGENTS:
            raise ValueError(f"tangent must be one of {TANGENTS}, got {tangent!r}")
        if weighting_power < 0 or weighting_eps <= 0:
            raise ValueError(
                f"weighting_power must be >= 0 and weighting_eps > 0, got {weighting_power}, {weighting_eps}"
            )
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1], got {label_dropout}")
        self.tangent = tangent
        self.time_sampler = time_sampler or TimeSampler()
        self.weighting_power = weighting_power
        self.weighting_eps = weighting_eps
        self.label_dropout = label_dropout
        self.guidance_scale = guidance_scale
        self.guidance_range = check_guidance_range(guidance_range, guidance_scale)
        if finite_difference_step is not None and not (0.0 < finite_difference_step < 0.5):
            raise ValueError(f"finite_difference_step must be in (0, 0.5) or None, got {finite_difference_step}")
        self.finite_difference_step = finite_difference_step
        self.flow_matching_steps = check_steps("flow_matching_steps", flow_matching_steps)

    def check_net(self, net: nn.Module) -> None:
        if self.guidance_scale != 1.0 and not getattr(net, "num_classes", None):
            raise ValueError(
                f"guidance_scale={self.guidance_scale} needs a class-conditional network: set the net's num_classes"
            )
        if self.guidance_range is not None and not getattr(net, "guidance_input", False):
            raise ValueError(
                f"guidance_range={list(self.guidance_range)} needs a network that takes the guidance scale as an "
                f"input: build {type(net).__name__} with num_classes and guidance_input: true"
            )
        guided = self.guidance_range is not None or self.guidance_scale != 1.0
        if guided and self.label_dropout == 0.0:
            what = (
                f"guidance_range={list(self.guidance_range)}"
                if self.guidance_range
                else f"guidance_scale={self.guidance_scale}"
            )
            raise ValueError(
                f"{what} with label_dropout=0.0: the null label that the guided target uses, u(z, t, t | null), "
                "is never trained; set label_dropout (e.g. 0.1, MeanFlow's)"
            )

    # -- labels and guidance -------------------------------------------------------------
    def _labels(self, net, y: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(labels fed to the net, mask of rows that kept their label)."""
        if y is None:
            return None, None
        keep = torch.rand(y.shape[0], device=y.device) >= self.label_dropout
        return torch.where(keep, y, torch.full_like(y, net.num_classes)), keep

    def _guidance_scales(self, y_in: torch.Tensor | None) -> torch.Tensor | None:
        """Each row's guidance scale w (B,) under ``guidance_range``, else None."""
        if self.guidance_range is None:
            return None
        if y_in is None:
            raise ValueError(f"guidance_range={list(self.guidance_range)} needs labels y in the batch")
        low, high = self.guidance_range
        return low + (high - low) * torch.rand(y_in.shape[0], device=y_in.device)

    def _target_velocity(self, net, z, t, v, keep, scale=None) -> torch.Tensor:
        """``w v + (1 - w) stopgrad u(z, t, t | null)`` on the rows that kept their label, ``v`` elsewhere; ``w`` is
        ``guidance_scale``, or each row's ``scale`` (B,) under ``guidance_range``."""
        if scale is None and self.guidance_scale == 1.0:
            return v
        if keep is None:
            self.check_net(net)
            raise ValueError(f"guidance_scale={self.guidance_scale} needs labels y in the batch")
        null = torch.full((z.shape[0],), net.num_classes, device=z.device, dtype=torch.long)
        w = self.guidance_scale if scale is None else expand_like(scale, v)
        with torch.no_grad():
            u_uncond = net(z, t, t, null if scale is None else GuidedLabels(null, scale))
        guided = w * v + (1 - w) * u_uncond
        return torch.where(expand_like(keep, v), guided, v)

    def row_weights(self, r: torch.Tensor, t: torch.Tensor, lam: float) -> torch.Tensor | float:
        """A weight per row on top of the adaptive one (B,), or 1."""
        return 1.0

    # -- the loss -----------------------------------------------------------------------
    def __call__(self, net, x, y=None, *, lam=0.0, step=0, e=None, path=None, r=None, t=None) -> ObjectiveOutput:
        lam = check_lambda(lam)
        path = default_path(x, e, path)
        if (r is None) != (t is None):
            raise ValueError("pass both r and t, or neither")
        n_equal = None
        if r is None:  # valid by construction: no check, which would sync with the host
            r, t, n_equal = self.time_sampler.draw(x.shape[0], x.device)
            if step < self.flow_matching_steps:
                r, n_equal = t, x.shape[0]
        else:
            check_times(r, t)
        y_in, keep = self._labels(net, y)
        scale = self._guidance_scales(y_in)
        z, v = path(t)
        v = self._target_velocity(net, z, t, v, keep, scale)
        if scale is not None:
            y_in = GuidedLabels(y_in, scale)
        residual = self.residual(net, z, r, t, v, y_in, lam, n_equal)
        # the reduction in at least float32, whatever the autocast dtype of u
        per_sample = residual.to(torch.promote_types(residual.dtype, torch.float32)).square().flatten(1).sum(1)
        weight = adaptive_weight(per_sample, self.weighting_power, self.weighting_eps) * self.row_weights(r, t, lam)
        return ObjectiveOutput(
            loss=(weight * per_sample).mean(),
            per_sample=per_sample.detach(),
            stats={"frac_r_lt_t": (r < t).float().mean()},
        )

    def residual(self, net, z, r, t, v, y=None, lam: float = 0.0, n_equal: int | None = None) -> torch.Tensor:
        """``u + (t - r) SG_lam[du/dt] - v`` for every row, (B, *D).

        Rows with r = t are flow matching (``u(z, t, t) - v``) and run no JVP. ``n_equal``: the first
        n_equal rows have r = t and the others r < t (``TimeSampler.draw``'s layout); the batch is then
        split by slicing, without a host-device sync. Without it (times from the caller), the rows are put
        in that layout first and back after (counting them is one sync).
        """
        if n_equal is None:
            jvp_rows = r < t
            order = torch.argsort(jvp_rows.to(torch.uint8), stable=True)  # the r = t rows first
            rows = (z[order], r[order], t[order], v[order], _rows(y, order))
            return self.residual(net, *rows, lam, int((~jvp_rows).sum()))[torch.argsort(order)]
        k = n_equal
        if self.detached_jvp_target(lam) and not draws_dropout(net):
            return self._stop_gradient_residual(net, z, r, t, v, y, k)
        every = self.same_calls_on_every_rank
        parts = [net(z[:k], t[:k], t[:k], _rows(y, slice(k))) - v[:k]] if k or every else []
        if k < z.shape[0] or every:
            tail = slice(k, None)
            parts.append(self._meanflow_residual(net, z[k:], r[k:], t[k:], v[k:], _rows(y, tail), lam))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _tangent(self, net, z, r, t, v, y) -> torch.Tensor:
        if self.tangent == "conditional":
            return v
        with torch.no_grad():
            return net(z, r, t, y) if self.tangent == "model" else net(z, t, t, y)

    def detached_jvp_target(self, lam: float) -> bool:
        """Whether the rows r < t regress on MeanFlow's target with du/dt detached (lambda = 0), so that
        their JVP needs no graph."""
        return lam == 0.0

    def _stop_gradient_residual(self, net, z, r, t, v, y, k: int) -> torch.Tensor:
        """lambda = 0 without dropout: du/dt needs no graph, so it is a no-grad JVP of the r < t rows only, and
        u comes from one forward over every row (u(z, t, t) of the r = t rows is the same call): one forward
        and one backward per step, as in flow matching, where a split batch would take two of each."""
        if k < z.shape[0] or self.same_calls_on_every_rank:
            tail = slice(k, None)
            dz = self._tangent(net, z[tail], r[tail], t[tail], v[tail], _rows(y, tail))
            # the JVP first, so its buffers are freed before the forward stores activations for backward
            _, dudt = u_and_dudt(
                net, z[tail], r[tail], t[tail], dz, _rows(y, tail), create_graph=False, step=self.finite_difference_step
            )
            dudt = torch.cat([dudt.new_zeros((k, *dudt.shape[1:])), dudt]) if k else dudt
            return net(z, r, t, y).to(dudt.dtype) + expand_like(t - r, z) * dudt - v
        return net(z, t, t, y) - v

    def _meanflow_residual(self, net, z, r, t, v, y, lam) -> torch.Tensor:
        dz = self._tangent(net, z, r, t, v, y)
        if lam == 0.0:
            # du/dt needs no graph: a no-grad JVP, then u from a plain forward with the
            # same dropout masks. JVP first, so its buffers are freed before the forward
            # stores activations for backward.
            rng = ReplayRNG(z.device)
            _, dudt = u_and_dudt(net, z, r, t, dz, y, create_graph=False, step=self.finite_difference_step)
            rng.restore()
            u = net(z, r, t, y)
        else:
            u, dudt = u_and_dudt(net, z, r, t, dz, y, create_graph=True, step=self.finite_difference_step)
        # in the JVP's precision (>= float32) even when u came from an autocast forward
        return u.to(dudt.dtype) + expand_like(t - r, z) * sg_lambda(dudt, lam) - v


def check_guidance_range(guidance_range, guidance_scale: float) -> tuple[float, float] | None:
    if guidance_range is None:
        return None
    low, high = (float(w) for w in guidance_range)
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise ValueError(
            f"guidance_range must be [low, high] with 0 <= low <= high, finite; got {list(guidance_range)}"
        )
    if guidance_scale != 1.0:
        raise ValueError(
            f"guidance_scale={guidance_scale} and guidance_range={list(guidance_range)}: choose one "
            "(a fixed training-time scale, or the scale as a network input)"
        )
    return low, high


def _rows(y: torch.Tensor | GuidedLabels | None, rows) -> torch.Tensor | GuidedLabels | None:
    if y is None:
        return None
    return y.rows(rows) if isinstance(y, GuidedLabels) else y[rows]
