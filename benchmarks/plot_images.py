"""A picture of digit samples per method of benchmarks/images.py: one row per method (a grid of its 1-step samples
and one of its 2-step samples, seed 0, from the same noise for every method), the data in the first row, and 100
Euler steps of flow matching where it ran.

    python benchmarks/plot_images.py [--steps 1500] [--methods M ...] [--out PNG]
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from mmf_lightning.figures import panels, show_images, wrap

RESULTS = Path(__file__).resolve().parent / "results"


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 images -> [-1, 1], as ``figures.show_images`` takes them."""
    return torch.from_numpy(images).float() / 127.5 - 1


def main():
    from images import label, real_digits

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--methods", nargs="+", default=["shipped", "curriculum300+equal0", "peer_meanflow", "fm", "ict"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "digits_samples.png"))
    args = p.parse_args()
    rows = [("data (scikit-learn's digits)", {"": real_digits()[:100].numpy()})]
    for method in args.methods:
        path = RESULTS / "images_samples" / f"{method}_seed{args.seed}_{args.steps}.npz"
        if not path.is_file():
            print(f"no samples of {method} at {args.steps} steps (seed {args.seed}): {path}; left out")
            continue
        kept = np.load(path)
        rows.append((label(method), {f"{k.removeprefix('steps_')} step(s)": kept[k] for k in kept.files}))
    cols = max(len(images) for _, images in rows)
    fig, axes = panels(len(rows) * cols, cols=cols, size=2.6)
    for r, (name, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r * cols + c]
            if c < len(images):
                title, grid = list(images.items())[c]
                show_images(ax, to_unit(grid[:64]), nrow=8)
                ax.set_title(f"{wrap(name, 40)}\n{title}" if c == 0 else title, fontsize=7)
            else:
                ax.axis("off")
    fig.suptitle(f"digits: samples of each method after {args.steps} steps (seed {args.seed}, the same noise)")
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
