"""Pictures in plain matplotlib, from tensors and numbers: sample grids and scatter plots, paths against the truth,
bar charts of metrics, smoothed curves. Every function draws on a ``matplotlib.figure.Figure`` made without pyplot,
so nothing here changes a notebook's backend or leaks open figures. The paper's figures from a folder of runs are
in ``runs.figures``."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

PANEL = 4.0  # inches per panel


def panels(n: int, cols: int | None = None, size: float = PANEL, height: float | None = None):
    """A figure with n panels on a grid of ``cols`` columns (default: all in one row): (fig, [axes])."""
    cols = min(n, cols or n)
    rows = -(-n // cols)
    fig = Figure(figsize=(size * cols, (height or size) * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def show_images(ax, x: torch.Tensor, nrow: int = 8) -> None:
    """Images (N, C, H, W) in [-1, 1] as one grid."""
    from torchvision.utils import make_grid

    grid = make_grid(((x.detach().float().cpu() + 1) / 2).clamp(0, 1), nrow=nrow, padding=1)
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if grid.shape[0] == 1 else None)
    ax.axis("off")


def scatter(ax, x: torch.Tensor, reference: torch.Tensor | None = None, label: str = "samples") -> None:
    """The first two coordinates of points (N, ...), over ``reference`` points in grey."""
    if reference is not None:
        ref = reference.detach().float().cpu().reshape(reference.shape[0], -1)
        ax.scatter(ref[:, 0].numpy(), ref[:, 1].numpy(), s=2, alpha=0.3, c="gray", label="data")
    x = x.detach().float().cpu().reshape(x.shape[0], -1)
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2, alpha=0.6, c="tab:blue", label=label)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=4, fontsize=8, frameon=False)


def draw_trajectories(ax, truth: torch.Tensor | None, predicted: dict[str, torch.Tensor]) -> None:
    """2-D paths (K + 1, N, 2) from t = 1 to t = 0: the truth dashed black, each prediction in a
    colour, their ends marked."""
    if truth is not None:
        t = truth.detach().float().cpu()
        ax.plot(t[:, :, 0].numpy(), t[:, :, 1].numpy(), "k--", lw=1.2, alpha=0.8)
        ax.plot([], [], "k--", label="ground truth")
        ax.scatter(t[0, :, 0].numpy(), t[0, :, 1].numpy(), c="k", s=10, marker="o", zorder=3, label="start")
        ax.scatter(t[-1, :, 0].numpy(), t[-1, :, 1].numpy(), c="k", s=14, marker="x", zorder=3)
    for color, (name, p) in zip(colors(len(predicted)), predicted.items()):
        p = p.detach().float().cpu()
        ax.plot(p[:, :, 0].numpy(), p[:, :, 1].numpy(), "-", color=color, lw=1.0, alpha=0.9)
        ax.plot([], [], "-", color=color, label=name)
        ax.scatter(p[-1, :, 0].numpy(), p[-1, :, 1].numpy(), color=color, s=10, marker="x", zorder=4)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def save_samples_figure(
    samples: dict[str, torch.Tensor],
    path: str | Path,
    reference: torch.Tensor | None = None,
    trajectories: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Path:
    """Write one panel per entry of ``samples`` (title -> (N, *data_shape)) to ``path`` (PNG).

    Images (N, C, H, W) in [-1, 1] become grids of the first 64; vectors become scatter plots of
    their first two coordinates, drawn over ``reference`` data when given. ``trajectories``:
    (truth, predicted), both (K + 1, N, 2), add a panel of the model's paths against the truth.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = panels(len(samples) + (trajectories is not None))
    for ax, (title, x) in zip(axes, samples.items()):
        show_images(ax, x[:64]) if x.dim() == 4 else scatter(ax, x, reference)
        ax.set_title(title, fontsize=10)
    if trajectories is not None:
        truth, predicted = trajectories
        draw_trajectories(axes[-1], truth, {f"{predicted.shape[0] - 1}-step model": predicted})
        axes[-1].set_title("trajectories against the truth", fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def save_metrics_figure(results: dict[str, dict[str, float]], columns: list[tuple[str, str]], path: str | Path) -> Path:
    """One bar chart per metric (``columns``: (title, key)) with a bar per run (``results``:
    run -> {key: value}); metrics no run has are left out."""
    from matplotlib.ticker import MaxNLocator

    columns = [(title, key) for title, key in columns if any(m.get(key) is not None for m in results.values())]
    if not columns:
        raise ValueError("no run has any of the metrics to plot")
    names = list(results)
    fig, axes = panels(len(columns), cols=4, size=3.2, height=0.45 * len(names) + 1.2)
    for i, (ax, (title, key)) in enumerate(zip(axes, columns)):
        values = [results[n].get(key) for n in names]
        ax.barh(range(len(names)), [v if v is not None else 0.0 for v in values], color="tab:blue")
        ax.set_yticks(range(len(names)), names if i % 4 == 0 else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased (TensorBoard's smoothing): weight 0 is the raw curve."""
    out, mean = [], 0.0
    for i, v in enumerate(values):
        mean = weight * mean + (1 - weight) * v
        out.append(mean / (1 - weight ** (i + 1)) if weight < 1 else v)
    return out


def grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]]) -> None:
    """Bars of ``series`` (name -> one value per group) side by side within each group."""
    width = 0.8 / max(1, len(series))
    for i, (color, (name, values)) in enumerate(zip(colors(len(series)), series.items())):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v if v is not None else math.nan for v in values], width, color=color, label=name)
    ax.set_xticks(range(len(groups)), [wrap(g) for g in groups], fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)


def wrap(label: str, width: int = 18) -> str:
    """A tick label on lines of ``width`` characters at most (at spaces), so neighbours do not collide."""
    import textwrap

    return textwrap.fill(label, width, break_long_words=False)


def legend_below(fig: Figure, axes) -> None:
    """One legend for the figure, below its panels (outside the data), from the labelled artists of ``axes``."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8, frameon=False)
