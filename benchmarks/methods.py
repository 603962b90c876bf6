"""The methods the benchmarks compare, ours and the peers', behind one interface.

A ``Method`` trains one average-velocity network ``net(z, r, t) -> (B, D)`` (the project's MLP or
UNet, the same for every method) and samples from it:

- ``loss(batch, step) -> scalar``: the training loss on a batch at optimizer step ``step``; the batch is a
  dict with "x" (data, (B, *D)) and, on the trajectory tasks, "e" (the paired start) or "path" (the true
  trajectory, a ``SampledPath``), which only our objectives read (a peer refuses them);
- ``objective.on_optimizer_step(net, step)``: called after each optimizer step (moves consistency
  training's target network; a no-op for the others);
- ``sample(net, e, steps) -> (N, D)``: K-step samples from source samples e, with ``net`` (the EMA
  copy at evaluation).

Peers (``pip install -e ".[bench]"``) are imported only here, and only when a peer row runs:
- ``rectified-flow-pytorch``'s ``MeanFlow`` calls ``model(z, t, t - r)`` with tangent (v, 1, 1);
  our net takes (z, r, t), so the wrapper feeds r = t - (t - r); the tangent of r is then 0.
- ``rectified-flow-pytorch``'s ``RectifiedFlow`` and ``torchcfm`` run time from noise (0) to data
  (1) and learn data - noise: the wrapper returns ``-net(z, 1 - s, 1 - s)``.
Each peer keeps its own defaults (what a new user gets): the time sampler, the adaptive weight, the
fraction of flow-matching batches. Every sample, ours and the peers', is drawn with our sampler
(``mmf_lightning.sampling``): average-velocity jumps for the MeanFlow-style methods, Euler on
u(z, t, t) for flow matching, so a K-step number means the same thing in every row.
"""

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mmf_lightning import sampling
from mmf_lightning.objectives import (
    AlphaFlow,
    ConsistencyTraining,
    Constant,
    CosineWarmup,
    FlowMatching,
    LinearWarmup,
    ModularMeanFlow,
    Objective,
    TimeSampler,
)


@dataclass
class Method:
    loss: Callable[[torch.Tensor, int], torch.Tensor]
    objective: Objective  # whose jump the sampler applies

    def sample(self, net: nn.Module, e: torch.Tensor, steps: int) -> torch.Tensor:
        return sampling.sample(net, self.objective, e, steps)


def ours(objective: Objective, lam: float | str | Callable = 0.0) -> Callable[[nn.Module, int], Method]:
    """One of our objectives at a constant ``lam``, or with ``lam="curriculum"``: lambda rising linearly from
    0 to 1 over the first third of the run (1000 of the quickstart's 3000 steps), as the LambdaScheduler does;
    or ``lam(total_steps)``, a schedule."""

    def make(net: nn.Module, total_steps: int) -> Method:
        if callable(lam):
            schedule = lam(total_steps)
        else:
            schedule = LinearWarmup(max(1, total_steps // 3)) if lam == "curriculum" else Constant(lam)

        def loss(b, step):
            return objective(
                net, b["x"], b.get("y"), step=step, lam=schedule(step), e=b.get("e"), path=b.get("path")
            ).loss

        return Method(loss, objective)

    return make


def consistency(net: nn.Module, total_steps: int, **options) -> Method:
    """Consistency training (EDM's grid, its N(k) schedule ending at the run's last step); ``options`` go to
    ``ConsistencyTraining`` (``target_ema=0``: improved CT's stop-gradient of the online net as the target)."""
    objective = ConsistencyTraining(total_steps=total_steps, **options)
    return Method(lambda b, step: objective(net, b["x"], step=step, e=b.get("e"), path=b.get("path")).loss, objective)


def warm_start(net: nn.Module, total_steps: int) -> Method:
    """The recommended objective after flow matching: every row r = t for the first third of the run, then the
    curriculum over the next third (configs/recipes/warm_start_checkerboard.yaml)."""
    third = max(1, total_steps // 3)
    objective = ModularMeanFlow("instantaneous", QUICKSTART_TIMES, flow_matching_steps=third)
    return ours(objective, lambda total: LinearWarmup(third, delay_steps=third))(net, total_steps)


def _data_only(b: dict) -> torch.Tensor:
    """The peers draw their own noise and straight paths: a batch with a paired start or a path is not theirs."""
    extra = sorted(k for k in b if k != "x" and b[k] is not None)
    if extra:
        raise ValueError(f"the peers train on data alone; this batch also has {extra} (a trajectory task)")
    return b["x"]


# -- peers -------------------------------------------------------------------------------------
class _AsPeerMeanFlow(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z, t, t_minus_r):
        return self.net(z, t - t_minus_r, t)


class _AsNoiseToData(nn.Module):
    """Velocity from noise (time 0) to data (time 1), as torchcfm and RectifiedFlow train it."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z, times):
        s = 1 - times.reshape(-1)
        return -self.net(z, s, s)


def peer_meanflow(net: nn.Module, total_steps: int) -> Method:
    from rectified_flow_pytorch import MeanFlow

    peer = MeanFlow(_AsPeerMeanFlow(net), data_shape=tuple(net.data_shape))
    return Method(lambda b, step: peer(_data_only(b)), ModularMeanFlow())


def peer_rectified_flow(net: nn.Module, total_steps: int) -> Method:
    from rectified_flow_pytorch import RectifiedFlow

    peer = RectifiedFlow(_AsNoiseToData(net), data_normalize_fn=None, data_unnormalize_fn=None)
    return Method(lambda b, step: peer(_data_only(b)), FlowMatching())


def peer_torchcfm(net: nn.Module, total_steps: int) -> Method:
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    cfm, model = ConditionalFlowMatcher(sigma=0.0), _AsNoiseToData(net)

    def loss(b, step):
        x = _data_only(b)
        s, zs, target = cfm.sample_location_and_conditional_flow(torch.randn_like(x), x)
        return (model(zs, s) - target).square().mean()

    return Method(loss, FlowMatching())


# The quickstart's time sampler (configs/quickstart.yaml): what a new user trains with.
QUICKSTART_TIMES = TimeSampler("uniform", equal_fraction=0.25)

# name -> (row label, factory(net, total_steps) -> Method)
METHODS: dict[str, tuple[str, Callable[[nn.Module, int], Method]]] = {
    "fm": ("flow matching", ours(FlowMatching(TimeSampler("uniform")))),
    "meanflow_stopgrad": (
        "MeanFlow stop-grad = MMF lambda = 0",
        ours(ModularMeanFlow("conditional", QUICKSTART_TIMES), 0.0),
    ),
    "meanflow_full": ("MeanFlow (full), eq. 9", ours(ModularMeanFlow("model", QUICKSTART_TIMES), 1.0)),
    "mmf_lam05": ("MMF lambda = 0.5", ours(ModularMeanFlow("conditional", QUICKSTART_TIMES), 0.5)),
    "mmf_lam1": ("MMF lambda = 1", ours(ModularMeanFlow("conditional", QUICKSTART_TIMES), 1.0)),
    "mmf_curriculum": (
        "MMF curriculum (paper)",
        ours(ModularMeanFlow("conditional", QUICKSTART_TIMES), "curriculum"),
    ),
    "mmf_lam1_inst": (
        "MMF lambda = 1, instantaneous tangent",
        ours(ModularMeanFlow("instantaneous", QUICKSTART_TIMES), 1.0),
    ),
    "recommended": (
        "MMF curriculum, instantaneous tangent (recommended)",
        ours(ModularMeanFlow("instantaneous", QUICKSTART_TIMES), "curriculum"),
    ),
    "recommended_fd": (
        "recommended, du/dt by central difference (h = 1e-3)",
        ours(ModularMeanFlow("instantaneous", QUICKSTART_TIMES, finite_difference_step=1e-3), "curriculum"),
    ),
    "warm_start": ("recommended after flow matching (first third of the steps)", warm_start),
    "consistency": ("consistency training", consistency),
    "consistency_sg": (
        "consistency training, stop-gradient target (iCT)",
        functools.partial(consistency, target_ema=0.0),
    ),
    # the newer recipes (configs/recipes/): iMF's v-loss without its guidance input, and alpha-Flow's curriculum
    # over the first half of the run (configs/recipes/alphaflow_checkerboard.yaml)
    "imf": (
        "iMF v-loss = MMF lambda = 0, instantaneous tangent",
        ours(ModularMeanFlow("instantaneous", QUICKSTART_TIMES)),
    ),
    "alphaflow": (
        "alpha-Flow curriculum (trajectory FM -> MeanFlow)",
        ours(AlphaFlow(time_sampler=QUICKSTART_TIMES), lambda total: CosineWarmup(max(1, total // 2))),
    ),
    "peer_meanflow": ("peer: rectified-flow-pytorch MeanFlow", peer_meanflow),
    "peer_rectified_flow": ("peer: rectified-flow-pytorch RectifiedFlow", peer_rectified_flow),
    "peer_torchcfm": ("peer: torchcfm ConditionalFlowMatcher", peer_torchcfm),
}
FLOW_MATCHING = ("fm", "peer_rectified_flow", "peer_torchcfm")
# the peers' rows and the package each imports
PEERS = {
    "peer_meanflow": "rectified_flow_pytorch",
    "peer_rectified_flow": "rectified_flow_pytorch",
    "peer_torchcfm": "torchcfm",
}


class EndpointTimes(TimeSampler):
    """``TimeSampler`` with a share ``endpoint_fraction`` of each batch at (r, t) = (0, 1) exactly, the 1-step map
    itself, taken from the rows with r < t (so the r = t rows stay first, as ``draw`` lays them out)."""

    def __init__(self, *args, endpoint_fraction: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.endpoint_fraction = endpoint_fraction

    def draw(self, n, device="cpu"):
        r, t, k = super().draw(n, device)
        m = min(n - k, int(self.endpoint_fraction * n + torch.rand(()).item()))
        return torch.cat([r[: n - m], r.new_zeros(m)]), torch.cat([t[: n - m], t.new_ones(m)]), k


# Variants of the recommended objective that take one setting from the peer MeanFlow's defaults
# (what could hold its 1-step samples back): quality runs only.
ABLATIONS: dict[str, tuple[str, Callable[[nn.Module, int], Method]]] = {
    "recommended_weighted": (
        "recommended + adaptive weight p = 0.5 (peer's)",
        ours(ModularMeanFlow("instantaneous", QUICKSTART_TIMES, weighting_power=0.5), "curriculum"),
    ),
    "recommended_logit_normal": (
        "recommended + logit-normal(-0.4, 1) times (peer's)",
        ours(
            ModularMeanFlow("instantaneous", TimeSampler("logit_normal", -0.4, 1.0, equal_fraction=0.25)),
            "curriculum",
        ),
    ),
    "recommended_half_fm": (
        "recommended, 50% of rows r = t (peer's share)",
        ours(ModularMeanFlow("instantaneous", TimeSampler("uniform", equal_fraction=0.5)), "curriculum"),
    ),
    # more rows with a large t - r, where the 1-step map (r, t) = (0, 1) is learnt: P(t - r > 0.8) is 4% with
    # uniform times, 0.1% with the logit-normal(-0.4, 1) above, 7% with (0, 2), 17% with (0, 3) and 23% with (0, 4)
    **{
        f"recommended_ln{std}": (
            f"recommended + logit-normal(0, {std}) times",
            ours(
                ModularMeanFlow("instantaneous", TimeSampler("logit_normal", 0.0, float(std), equal_fraction=0.25)),
                "curriculum",
            ),
        )
        for std in (2, 3, 4)
    },
    # the 1-step map trained directly on a share of every batch
    "recommended_end10": (
        "recommended + 10% of rows at (r, t) = (0, 1)",
        ours(ModularMeanFlow("instantaneous", EndpointTimes("uniform", equal_fraction=0.25)), "curriculum"),
    ),
    "recommended_ln3_end10": (
        "recommended + logit-normal(0, 3) times, 10% at (0, 1)",
        ours(
            ModularMeanFlow("instantaneous", EndpointTimes("logit_normal", 0.0, 3.0, equal_fraction=0.25)),
            "curriculum",
        ),
    ),
}


def interleaved_medians(fns: dict, repeats: int, inner: int) -> dict[str, float]:
    """Median over ``repeats`` rounds of the mean time of ``inner`` calls, the functions interleaved."""
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(ts) for k, ts in times.items()}
