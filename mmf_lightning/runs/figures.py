"""The paper's figures (Figs. 1-6) from a folder of runs (``runs.find_runs``), drawn with ``figures``; in a
notebook the returned figure shows itself, and ``python -m mmf_lightning plot <runs folder>`` writes them
(``FIGURES``) as PNG files."""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure

from mmf_lightning.data.base import reference_points
from mmf_lightning.figures import (
    colors,
    draw_trajectories,
    grouped_bars,
    legend_below,
    panels,
    show_images,
    smooth,
    wrap,
)
from mmf_lightning.runs.folders import Run, find_evaluations


def curve(ax, runs: list[Run], key: str, weight: float = 0.0, log: bool = False) -> int:
    """Plot one logged metric against the step for each run that has it; returns how many did."""
    drawn = 0
    for color, run in zip(colors(len(runs)), runs):
        if key in run.metrics:
            steps, values = run.metrics[key]
            marker = "o" if len(steps) <= 2 else None  # a point or two: a line alone would hide them
            ax.plot(steps, smooth(values, weight), color=color, label=run.label, lw=1.2, marker=marker)
            drawn += 1
    ax.set_xlabel("step")
    if log and drawn:
        ax.set_yscale("log")
    if not drawn:
        ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)
    return drawn


def loss_curves(runs: list[Run], smoothing: float = 0.9) -> Figure:
    """Fig. 1: training dynamics across lambda. (a) the training loss, smoothed; (b) the raw loss,
    log scale, where full-gradient runs oscillate; (c) the lambda each run trained with. A dashed line marks
    each step where ``callbacks.SpikeRollback`` rolled a run back."""
    fig, (a, b, c) = panels(3)
    curve(a, runs, "train/loss", smoothing)
    a.set_title(f"(a) training loss (EMA {smoothing:g})", fontsize=10)
    curve(b, runs, "train/loss", 0.0, log=True)
    b.set_title("(b) training loss, raw", fontsize=10)
    curve(c, runs, "train/lambda")
    c.set_title("(c) λ during training", fontsize=10)
    mark_rollbacks((a, b, c), runs)
    legend_below(fig, (a, b, c))
    return fig


def rollback_steps(run: Run) -> list[int]:
    """The steps at which the run's ``train/rollbacks`` count rose (``callbacks.SpikeRollback``)."""
    steps, counts = run.metrics.get("train/rollbacks", ([], []))
    return [s for s, before, now in zip(steps, [0.0, *counts], counts) if now > before]


def mark_rollbacks(axes, runs: list[Run]) -> None:
    for color, run in zip(colors(len(runs)), runs):
        for i, step in enumerate(rollback_steps(run)):
            for ax in axes:
                ax.axvline(step, color=color, ls="--", lw=0.8, label="rollback" if ax is axes[0] and not i else None)


class NotApplicable(ValueError):
    """A figure that does not apply to these runs (e.g. velocity fields of images)."""


def two_d(runs: list[Run], figure: str) -> None:
    for run in runs:
        shape = tuple(run.load_module().data_shape)
        if shape != (2,):
            raise NotApplicable(f"the {figure} figure needs 2-D data; run {run.folder} has data of shape {shape}")


@torch.no_grad()
def velocity_fields(runs: list[Run], grid: int = 21, extent: float | None = None, r: float = 0.0, t: float = 1.0):
    """Fig. 2: the learned average velocity of each run on a grid of points: arrows of the jump
    -(t - r) u(z, r, t) from z at time t (the one-step sample map for r = 0, t = 1), coloured by
    length, over the run's data in grey. ``extent``: the grid spans [-extent, extent]^2 (default:
    the data's range)."""
    two_d(runs, "velocity-fields")
    fields = []
    for run in runs:
        module, reference = run.load_module(), reference_points(run.datamodule(), 2000)
        half = extent or (1.1 * float(reference.abs().max()) if reference is not None else 3.0)
        line = torch.linspace(-half, half, grid)
        z = torch.stack(torch.meshgrid(line, line, indexing="xy"), -1).reshape(-1, 2)
        fields.append((run, z, -(t - r) * module.average_velocity(z, r, t), reference))
    top = max(float(jump.norm(dim=1).max()) for _, _, jump, _ in fields)  # one colour scale: panels compare
    fig, axes = panels(len(runs))
    for ax, (run, z, jump, reference) in zip(axes, fields):
        if reference is not None:
            ax.scatter(reference[:, 0].numpy(), reference[:, 1].numpy(), s=1, c="lightgray", zorder=0)
        z, jump = z.numpy(), jump.numpy()
        lengths = (jump**2).sum(1) ** 0.5
        q = ax.quiver(z[:, 0], z[:, 1], jump[:, 0], jump[:, 1], lengths, angles="xy", cmap="viridis", clim=(0, top))
        ax.set_title(wrap(run.label, 45), fontsize=10)
        ax.set_aspect("equal")
    fig.colorbar(q, ax=axes, shrink=0.7, label="|jump| (one scale for every panel)")
    # two lines: one line is wider than a single panel
    fig.suptitle(f"average velocity u(z, {r:g}, {t:g}):\nthe jump from t = {t:g} to {r:g}", fontsize=11)
    return fig


def quality_metric(runs: list[Run], evaluations: dict, metric: str | None) -> str:
    """The metric Fig. 3 compares: ``metric``, else FID (one step) when any run has it, else the
    sliced Wasserstein distance (low-dimensional data has no FID)."""
    if metric:
        return metric
    have = {k.removeprefix("val/") for r in runs for k in r.metrics} | {
        k for sets in evaluations.values() for m in sets.values() for k in m
    }
    return "fid_1step" if "fid_1step" in have else "sw_1step"


def fid_comparison(runs: list[Run], evaluation_folders=(), metric: str | None = None) -> Figure:
    """Fig. 3: (a) the metric across training-data fractions, a bar per method in each group (the
    value ``evaluate`` gave on the run's own data when there is one, else the last validation's);
    (b) across evaluation sets (``evaluate --data <shifted set>`` results found under
    ``evaluation_folders``), a bar per run."""
    evaluations = find_evaluations(runs, evaluation_folders)
    metric = quality_metric(runs, evaluations, metric)
    fig, (a, b) = panels(2, size=5.0)

    def value(run: Run, data_set: str = "own data") -> float | None:
        own = evaluations.get(run.folder, {}).get(data_set, {}).get(metric)
        return own if own is not None or data_set != "own data" else run.final(f"val/{metric}")

    fractions = sorted({r.facets.get("data", "all data") for r in runs}, key=_percent)
    methods: dict[str, list[float | None]] = {}
    for run in runs:
        row = methods.setdefault(run.label_without("data"), [None] * len(fractions))
        row[fractions.index(run.facets.get("data", "all data"))] = value(run)
    grouped_bars(a, fractions, methods)
    a.set_title(f"(a) {metric} across training data", fontsize=10)
    sets = sorted({s for r in runs for s in evaluations.get(r.folder, {}) if s != "own data"})
    if sets:
        grouped_bars(b, sets, {r.label: [value(r, s) for s in sets] for r in runs if r.folder in evaluations})
    else:
        b.text(0.5, 0.5, "no `evaluate --data <shifted set>` results found\n(pass the folder of its evaluation.json)",
               ha="center", va="center", transform=b.transAxes, fontsize=8)  # fmt: skip
        b.set_xticks([]), b.set_yticks([])  # no axis to read on an empty panel
    b.set_title(f"(b) {metric} across evaluation sets", fontsize=10)
    return fig


def _percent(facet: str) -> float:
    head = facet.split("%")[0]
    return float(head) if head.replace(".", "", 1).isdigit() else 100.0


@torch.no_grad()
def pair_distances(run: Run, num_pairs: int, seed: int, lpips=None) -> torch.Tensor:
    """Distances between the one-step samples of two independent starts (N,): LPIPS for images
    (``metrics.evaluation.lpips_diversity``), Euclidean for other data."""
    from mmf_lightning.metrics.evaluation import lpips_diversity

    module = run.load_module()
    generator = torch.Generator().manual_seed(seed)
    if len(module.data_shape) == 3:
        return lpips_diversity(module, lpips, num_pairs, generator)
    a, b = module.sample(num_pairs, 1, generator=generator), module.sample(num_pairs, 1, generator=generator)
    return (a - b).flatten(1).norm(dim=1)


def diversity_and_stability(
    runs: list[Run], num_pairs: int = 200, seed: int = 0, lpips_weights_path: str | None = None
) -> Figure:
    """Fig. 4: (a) box plots of LPIPS between one-step samples of independent seeds, per run
    (Euclidean distance for non-image data); (b) box plots of the training loss's variance over
    training (``train/loss_var``, logged every step over a window), log scale."""
    images = any(len(run.load_module().data_shape) == 3 for run in runs)
    lpips = None
    if images:
        from mmf_lightning.metrics.lpips import LPIPS

        lpips = LPIPS(lpips_weights_path)
    fig, (a, b) = panels(2, size=max(4.0, 1.2 * len(runs)))
    labels = [run.label for run in runs]
    a.boxplot([pair_distances(run, num_pairs, seed, lpips).numpy() for run in runs], showfliers=False)
    a.set_xticks(range(1, len(runs) + 1), [wrap(label) for label in labels], fontsize=7)
    a.set_title("(a) " + ("LPIPS" if images else "distance") + " between samples of independent seeds", fontsize=10)
    variances = [run.metrics.get("train/loss_var", ([], []))[1] for run in runs]
    if any(variances):
        b.boxplot([v or [math.nan] for v in variances], showfliers=False)
        b.set_xticks(range(1, len(runs) + 1), [wrap(label) for label in labels], fontsize=7)
        b.set_yscale("log")
    else:
        b.text(0.5, 0.5, "no run logged train/loss_var", ha="center", va="center", transform=b.transAxes)
    b.set_title("(b) training loss variance over training", fontsize=10)
    return fig


@torch.no_grad()
def paths(runs: list[Run], steps: int = 8, num: int = 16, seed: int = 0) -> Figure:
    """Fig. 5: (left) each run's K-step sampling paths from shared noise: for 2-D data the paths
    themselves, for images the states of each path in a row; (right) D_path over training
    (``val/d_path``, logged by PathMetrics)."""
    fig, axes = panels(len(runs) + 1, cols=min(4, len(runs) + 1))
    for ax, run in zip(axes, runs):
        module = run.load_module()
        e, y = module.draw_starts(num, None, torch.Generator().manual_seed(seed))
        states = module.trajectory_from(e, steps, y)  # (K + 1, N, *D)
        if states.dim() == 5:  # images: one row of K + 1 states for each of the first 4 paths
            show_images(ax, states[:, :4].transpose(0, 1).flatten(0, 1), nrow=steps + 1)
        else:
            reference = reference_points(run.datamodule(), 2000) if states.shape[-1] == 2 else None
            if reference is not None:  # the paths over the data they should end on
                ax.scatter(reference[:, 0].numpy(), reference[:, 1].numpy(), s=1, c="lightgray", zorder=0)
            draw_trajectories(ax, None, {f"{steps}-step paths": states.flatten(2)[..., :2]})
        ax.set_title(wrap(run.label, 45), fontsize=10)
    curve(axes[-1], runs, "val/d_path", log=True)
    axes[-1].set_title("D_path over training", fontsize=10)
    legend_below(fig, axes[-1:])
    return fig


@torch.no_grad()
def trajectory_reconstructions(runs: list[Run], num: int = 8, seed: int = 0) -> Figure:
    """Fig. 6: ODE and control tasks: for each task (runs grouped by their data), the paths each
    run reconstructs from the same starts against the ground truth on the task's time grid
    (fresh starts of known dynamics, or held-out trajectories of a file)."""
    from mmf_lightning.metrics.evaluation import truth_paths, truth_protocol

    tasks = by_task(runs)
    fig, axes = panels(len(tasks), size=5.0)
    for ax, (task, members) in zip(axes, tasks.items()):
        datamodule = members[0].datamodule()
        kind, note = truth_protocol(datamodule)
        if kind is None:
            raise NotApplicable(
                f"run {members[0].folder} has no trajectory ground truth: {note or 'not a trajectory task'}"
            )
        truth = truth_paths(datamodule, num, seed)
        predicted = {run.label: run.load_module().trajectory_from(truth[0], truth.shape[0] - 1) for run in members}
        draw_trajectories(ax, truth, predicted)
        ax.set_title(task, fontsize=10)
    return fig


def by_task(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by their data (task name -> runs), each group labelled by what differs within it."""
    from dataclasses import replace

    from mmf_lightning.runs.folders import describe_data_facet, name_facets

    tasks: dict[str, list[Run]] = {}
    for run in runs:
        tasks.setdefault(describe_data_facet(run.config.get("data")), []).append(replace(run, facets={}))
    for members in tasks.values():
        name_facets(members)
    return tasks


# what draws each figure of ``python -m mmf_lightning plot`` (whose ``commands.plot.FIGURES`` says what each shows)
FIGURES = {
    "loss-curves": loss_curves,
    "velocity-fields": velocity_fields,
    "fid": fid_comparison,
    "diversity": diversity_and_stability,
    "paths": paths,
    "trajectories": trajectory_reconstructions,
}
