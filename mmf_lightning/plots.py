"""Pictures of samples: an image grid, or a scatter plot for 2-D data."""

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
            ax.imshow(grid.permute(1, 2, 0).squeeze(-1), cmap="gray" if grid.shape[0] == 1 else None)
            ax.axis("off")
        else:
            x = x.reshape(x.shape[0], -1)
            if reference is not None:
                ref = reference.detach().float().cpu().reshape(reference.shape[0], -1)
                ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.3, c="gray", label="data")
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, c="tab:blue", label="samples")
            ax.set_aspect("equal")
            ax.legend(loc="upper right", markerscale=4)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
