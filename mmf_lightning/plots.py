"""Pictures: samples (an image grid, or a scatter plot for 2-D data) and metrics compared across runs."""

from pathlib import Path

import torch


def save_samples_figure(
    samples: dict[str, torch.Tensor], path: str | Path, reference: torch.Tensor | None = None
) -> Path:
    """Write one panel per entry of ``samples`` (title -> (N, *data_shape)) to ``path`` (PNG).

    Images (N, C, H, W) in [-1, 1] become grids; vectors (N, 2) become scatter plots,
    drawn over ``reference`` data when given. Other shapes plot their first two coordinates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4), squeeze=False)
    for ax, (title, x) in zip(axes[0], samples.items()):
        x = x.detach().float().cpu()
        if x.dim() == 4:
            grid = make_grid(((x[:64] + 1) / 2).clamp(0, 1), nrow=8, padding=1)
            ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if grid.shape[0] == 1 else None)
            ax.axis("off")
        else:
            x = x.reshape(x.shape[0], -1)
            if reference is not None:
                ref = reference.detach().float().cpu().reshape(reference.shape[0], -1)
                ax.scatter(ref[:, 0].numpy(), ref[:, 1].numpy(), s=2, alpha=0.3, c="gray", label="data")
            ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2, alpha=0.6, c="tab:blue", label="samples")
            ax.set_aspect("equal")
            ax.legend(loc="upper right", markerscale=4)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_metrics_figure(results: dict[str, dict[str, float]], columns: list[tuple[str, str]], path: str | Path) -> Path:
    """One bar chart per metric (``columns``: (title, key)) with a bar per run (``results``:
    run -> {key: value}); metrics no run has are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = [(title, key) for title, key in columns if any(m.get(key) is not None for m in results.values())]
    if not columns:
        raise ValueError("no run has any of the metrics to plot")
    names = list(results)
    cols = min(4, len(columns))
    rows = -(-len(columns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.45 * len(names) * rows + 1.2 * rows), squeeze=False)
    for ax, (title, key) in zip(axes.flat, columns):
        values = [results[n].get(key) for n in names]
        ax.barh(range(len(names)), [v if v is not None else 0.0 for v in values], color="tab:blue")
        ax.set_yticks(range(len(names)), names if ax in axes[:, 0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
