"""The paper's metrics for one model: Tables 2 and 3, and the distances and trajectory errors of
the low-dimensional tasks. Definitions and the reasons for them: docs/metrics.md.

Plain torch. Samples come in blocks seeded by their index (``metrics.ranks``), each rank draws its
own blocks, and per-sample values are summed over ranks: one process or many give the same
numbers. ``module`` is a MeanFlowModule (or anything with its sampling methods); ``datamodule``
is asked only for what it has: ``reference_samples`` (low-dimensional data) and
``truth_protocol`` with ``ground_truth`` or ``held_out_paths`` (trajectory tasks).
"""

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mmf_lightning.metrics.distances import energy_distance, sliced_wasserstein
from mmf_lightning.metrics.ranks import SINGLE, Ranks, Sums, float64
from mmf_lightning.utils.console import progress as progress_bar


@dataclass
class EvaluationSettings:
    """What is measured, and on how many samples.

    Args:
        num_samples: samples for the path metrics, one-step errors and LPIPS diversity.
        steps: K, the many-step reference solution and the grid of the path metrics.
        batch_size: block size of the block-seeded samples.
        seed: the samples' seed (the same samples for every checkpoint).
        distance_samples: low-dimensional data: model and fresh true samples for the distances.
        timing_repeats: timed one-step samples at batch size 1 (0: no timing).
        timing_warmup: untimed samples before them.
    """

    num_samples: int = 1000
    steps: int = 16
    batch_size: int = 250
    seed: int = 0
    distance_samples: int = 5000
    timing_repeats: int = 50
    timing_warmup: int = 10

    def __post_init__(self):
        if self.num_samples < 2 or self.batch_size < 1 or self.steps < 2 or self.distance_samples < 2:
            raise ValueError(
                "need num_samples >= 2, batch_size >= 1, steps >= 2 and distance_samples >= 2, got "
                f"{self.num_samples}, {self.batch_size}, {self.steps}, {self.distance_samples}"
            )
        if self.timing_repeats < 0 or self.timing_warmup < 0:
            raise ValueError(
                f"timing_repeats and timing_warmup must be >= 0, got {self.timing_repeats}, {self.timing_warmup}"
            )


def mean_square(a: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared entry: (N, ...) -> (N,), in float64."""
    return float64(a.flatten(1)).square().mean(1)


def path_metrics(module, e: torch.Tensor, y, steps: int, lpips=None) -> dict[str, torch.Tensor]:
    """Per-sample one-step error, D_path, smoothness and (with ``lpips``) LPIPS along the path
    of the K-step trajectories from starts ``e``: each (N,)."""
    trajectory = module.trajectory_from(e, steps, y)  # (K + 1, N, ...): z_{t_0} = e ... z_{t_K}
    predictions = module.data_predictions(trajectory, y)  # x_hat_k; x_hat_0 is the one-step sample
    end = trajectory[-1]
    out = {
        "one_step_error": mean_square(predictions[0] - end),
        "d_path": torch.stack([mean_square(p - end) for p in predictions[:-1]]).mean(0),
        "smoothness": torch.stack(
            [mean_square(trajectory[k + 1] - 2 * trajectory[k] + trajectory[k - 1]) for k in range(1, steps)]
        ).mean(0),
    }
    if lpips is not None:
        out["lpips_path"] = torch.stack([lpips(predictions[k], predictions[k + 1]) for k in range(steps)]).mean(0)
    return out


def truth_protocol(datamodule) -> tuple[str | None, str | None]:
    """How a datamodule's trajectories are judged against the truth: ("starts", note) through
    ``ground_truth`` of the model's own starts, ("held_out", note) through ``held_out_paths``,
    (None, why not) for trajectory data without truth, (None, None) for other data. The note
    goes into the report."""
    describe = getattr(datamodule, "truth_protocol", None)
    return describe() if callable(describe) else (None, None)


def truth_paths(datamodule, n: int, seed: int = 0) -> torch.Tensor | None:
    """n true paths of a trajectory task, (K' + 1, n, D) from t = 1 to 0, for pictures: the first
    n held-out trajectories (``held_out`` protocol, after setup), or the true paths of n seeded
    starts (``starts``); None for data without a truth."""
    kind, _ = truth_protocol(datamodule)
    if kind == "held_out":
        return datamodule.held_out_paths()[:, :n]
    if kind == "starts":
        g = torch.Generator().manual_seed(seed)
        return datamodule.ground_truth(datamodule.source.sample(n, datamodule.data_shape, g))
    return None


def truth_errors(module, datamodule, e: torch.Tensor, y, truth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Against the ground-truth paths of a trajectory task, on its own time grid: per-sample
    mean distance along the path, distance at the end, and the one-step sample's mean squared
    error to the true end point. Each (N,). ``truth``: the true paths of starts ``e``
    (K' + 1, N, D), t = 1 -> 0 (held-out trajectories); else ``datamodule.ground_truth(e)``."""
    if truth is None:
        truth = datamodule.ground_truth(e.cpu())
    truth = truth.to(module.device)  # (K' + 1, N, D), t = 1 -> 0
    trajectory = module.trajectory_from(e, truth.shape[0] - 1, y)
    one_step = module.trajectory_from(e, 1, y)[-1]
    distance = (float64(trajectory) - float64(truth)).flatten(2).norm(dim=-1)  # (K' + 1, N)
    return {
        "path_error": distance.mean(0),
        "end_error": distance[-1],
        "one_step_error_truth": mean_square(one_step - truth[-1]),
    }


def lpips_diversity(module, lpips, n: int, generator: torch.Generator) -> torch.Tensor:
    """LPIPS between the one-step samples of two independent starts with the same label: (N,)."""
    e, y = module.draw_starts(n, None, generator)
    e2, _ = module.draw_starts(n, y, generator)
    return lpips(module.trajectory_from(e, 1, y)[-1], module.trajectory_from(e2, 1, y)[-1])


def distances(module, datamodule, settings: EvaluationSettings, sample_steps=(1, 2)) -> dict[str, float]:
    """Sliced Wasserstein-2 and energy distance of ``distance_samples`` model samples to as many
    fresh true samples. Low-dimensional samples are cheap: every rank draws all blocks and gets
    the same value."""
    reference = datamodule.reference_samples(settings.distance_samples)
    out = {}
    for k in sample_steps:
        blocks = SINGLE.seeded_blocks(settings.distance_samples, settings.batch_size, settings.seed, module.device)
        samples = torch.cat([module.sample(n, k, generator=g).cpu() for n, g in blocks])
        g = torch.Generator().manual_seed(settings.seed)
        out[f"sw_{k}step"] = sliced_wasserstein(samples.flatten(1), reference.flatten(1), generator=g)
        out[f"energy_{k}step"] = energy_distance(samples.flatten(1), reference.flatten(1))
    return out


def inference_time(module, repeats: int = 50, warmup: int = 10) -> float:
    """Median wall-clock seconds of one one-step sample at batch size 1, after ``warmup``
    untimed samples, the device synchronised around each."""
    device = module.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        module.sample(1, 1, generator=g)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class Phases:
    """How long each group of metrics took and on how many samples: ``{name: {"samples", "seconds"}}``,
    said as each ends when ``echo`` is given (e.g. ``print`` on rank 0)."""

    def __init__(self, echo=None):
        self.done: dict[str, dict] = {}
        self.echo = echo

    @contextmanager
    def __call__(self, name: str, samples: str):
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.done[name] = {"samples": samples, "seconds": round(seconds, 2)}
        if self.echo is not None:
            self.echo(f"  {name}: {samples}, {seconds:.1f} s")


def evaluate_model(
    module,
    datamodule,
    settings: EvaluationSettings,
    ranks: Ranks = SINGLE,
    lpips=None,
    fid=None,
    progress=False,
    phases: Phases | None = None,
) -> dict[str, float]:
    """All metrics that apply to this model and data, as {name: value} (the same on every rank).

    ``lpips``: a ``metrics.lpips.LPIPS`` (images), adds LPIPS along the path and across seeds.
    ``fid``: a prepared ``callbacks.FID``, adds ``fid_{k}step``. Inference time is measured on
    rank 0 only (0.0 elsewhere) when ``settings.timing_repeats`` > 0. ``phases`` records the
    time and sample count of each group of metrics.
    """
    phase = phases if phases is not None else Phases()
    sums = Sums()
    truth_kind, _ = truth_protocol(datamodule)
    with_truth = truth_kind is not None
    with phase(
        "path metrics", f"{settings.num_samples} samples x {settings.steps} steps" + (", LPIPS" if lpips else "")
    ):
        _path_sums(module, datamodule, settings, ranks, lpips, progress, truth_kind, sums)
    names = ["one_step_error", "d_path", "smoothness"]
    names += ["path_error", "end_error", "one_step_error_truth"] if with_truth else []
    names += ["lpips_path", "lpips_diversity"] if lpips is not None else []
    reduced = sums.reduce(ranks, names, module.device)
    out = {name: reduced[name]["mean"] for name in names}
    if lpips is not None:
        out["lpips_diversity_std"] = reduced["lpips_diversity"]["std"]
    if callable(getattr(datamodule, "reference_samples", None)):
        with phase("distances", f"{settings.distance_samples} samples, 1 and 2 steps"):
            out.update(distances(module, datamodule, settings))
    if fid is not None:
        with phase("FID", f"{fid.num_samples} samples, {'/'.join(map(str, fid.steps))} step(s)"):
            out.update({f"fid_{k}step": v for k, v in fid.measure(module, ranks, progress).items()})
    if settings.timing_repeats > 0:
        with phase("inference time", f"{settings.timing_repeats} timed samples at batch 1"):
            out["inference_time"] = (
                inference_time(module, settings.timing_repeats, settings.timing_warmup) if ranks.is_zero else 0.0
            )
    return out


def _path_sums(module, datamodule, settings, ranks, lpips, progress, truth_kind, sums: Sums) -> None:
    """The per-sample path metrics (and truth errors, LPIPS) of this rank's blocks, into ``sums``."""
    blocks = ranks.seeded_blocks(settings.num_samples, settings.batch_size, settings.seed, module.device)
    for n, g in progress_bar(blocks, desc="path metrics", disable=not (progress and ranks.is_zero), leave=False):
        e, y = module.draw_starts(n, None, g)
        for name, values in path_metrics(module, e, y, settings.steps, lpips).items():
            sums.add(name, values)
        if truth_kind == "starts":
            for name, values in truth_errors(module, datamodule, e, y).items():
                sums.add(name, values)
        if lpips is not None:
            sums.add("lpips_diversity", lpips_diversity(module, lpips, n, g))
    if truth_kind == "held_out":  # the first num_samples held-out trajectories, in blocks split across ranks
        paths = datamodule.held_out_paths()[:, : settings.num_samples]
        for b, n in ranks.blocks(paths.shape[1], settings.batch_size):
            truth = paths[:, b * settings.batch_size : b * settings.batch_size + n]
            for name, values in truth_errors(module, datamodule, truth[0].to(module.device), None, truth).items():
                sums.add(name, values)
