"""Where a 1-step sampler's error sits, on checkerboard: the share of samples off the board's dark squares, how far
off they land, and a picture of the samples, for 100-step flow matching and an objective of benchmarks/methods.py
at 1 and 2 steps, trained as benchmarks/quality.py trains them (same seed, recipe and judging samples).

The trained EMA networks are kept in ``--nets`` and reloaded, so the table and the picture can be redrawn
without training again.

    python benchmarks/one_step_gaps.py [--method recommended_ln3] [--steps 100000] [--seed 2]
        [--recipe lr=2e-3] [--eval_n 50000] [--out docs/one_step_gaps.png]
"""

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from quality import METHODS, parse_recipe, task, train

from mmf_lightning.metrics.distances import sliced_wasserstein

HERE = Path(__file__).parent
DATASET = "checkerboard"
SHOWN = 20_000  # samples drawn per panel
DARK_SQUARES = [(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i - j) % 2 == 0]  # lower-left corners


def distance_to_board(x: torch.Tensor) -> torch.Tensor:
    """(N, 2) points -> (N,) Euclidean distance to the nearest dark square of mmf_lightning's checkerboard
    (the unit cells [i, i + 1] x [j, j + 1] of [-2, 2]^2 with i - j even); 0 on the board."""
    corners = torch.tensor(DARK_SQUARES, dtype=x.dtype)
    outside = torch.maximum(corners - x[:, None], x[:, None] - (corners + 1)).clamp(min=0)  # (N, 8, 2)
    return outside.norm(dim=-1).amin(dim=1)


def net_path(method_name: str, args) -> Path:
    return Path(args.nets) / f"{method_name}_{DATASET}_seed{args.seed}_{args.steps}_{'_'.join(args.recipe)}.pt"


def train_once(method_name: str, args, recipe: dict) -> None:
    """Trains ``method_name`` on checkerboard and keeps its EMA network in ``--nets``, unless it is there."""
    path = net_path(method_name, args)
    if not path.exists():
        torch.set_num_threads(1)
        net, _, _ = train(method_name, task(DATASET, recipe, args.eval_n), args.seed, args.steps)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)


def load(method_name: str, args, data):
    """(EMA network, Method) of ``method_name``, as ``train_once`` kept it."""
    net = data.make_net()
    net.load_state_dict(torch.load(net_path(method_name, args)))
    return net.eval(), METHODS[method_name][1](net, args.steps)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="recommended_ln3", choices=list(METHODS))
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--recipe", nargs="+", default=["lr=2e-3"], metavar="KEY=VALUE")
    p.add_argument("--eval_n", type=int, default=50_000)
    p.add_argument("--nets", default=str(HERE / "results" / "nets"), help="folder the trained networks are kept in")
    p.add_argument("--out", type=Path, default=HERE.parent / "docs" / "one_step_gaps.png")
    args = p.parse_args()
    recipe = parse_recipe(args.recipe)
    data = task(DATASET, recipe, args.eval_n)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(train_once, ["fm", args.method], [args] * 2, [recipe] * 2))
    fm, ours = load("fm", args, data), load(args.method, args, data)
    e, ref = data.noise(args.seed), data.reference(args.seed)
    with torch.no_grad():
        rows = {
            "fresh data": data.second_draw(args.seed),
            "flow matching, 100 steps": fm[1].sample(fm[0], e, 100),
            f"{METHODS[args.method][0]}, 1 step": ours[1].sample(ours[0], e, 1),
            f"{METHODS[args.method][0]}, 2 steps": ours[1].sample(ours[0], e, 2),
        }
    lines = [
        f"`python benchmarks/one_step_gaps.py {' '.join(sys.argv[1:])}`: checkerboard, seed {args.seed}, "
        f"{args.steps} steps, {' '.join(args.recipe)}, {args.eval_n} samples\n",
        "| samples | sliced Wasserstein | off the board | their mean distance to it | 99.9% quantile | farthest |",
        "|---|---|---|---|---|---|",
    ]
    distances = {name: distance_to_board(x) for name, x in rows.items()}
    for name, x in rows.items():
        d = distances[name]
        off = d[d > 0]
        lines.append(
            f"| {name} | {sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0)):.4f} "
            f"| {100 * len(off) / len(d):.2f}% | {off.mean().item() if len(off) else 0:.3f} "
            f"| {d.quantile(0.999).item():.3f} | {d.max().item():.3g} |"
        )
    table = HERE / "results" / f"one_step_gaps_{args.method}_seed{args.seed}_{args.steps}_{'_'.join(args.recipe)}.md"
    table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig = Figure(figsize=(4 * len(rows), 4.2), layout="constrained")
    for ax, (name, x) in zip(fig.subplots(1, len(rows)), rows.items()):
        off = distances[name] > 0
        shown, shown_off = x[:SHOWN], off[:SHOWN]  # the picture's file stays small; the shares are of all samples
        ax.scatter(*shown[~shown_off].T, s=0.5, color="#7f9cbf", linewidths=0, antialiased=False)
        ax.scatter(*shown[shown_off].T, s=1, color="#c0392b", linewidths=0, antialiased=False)
        for corner in DARK_SQUARES:
            ax.add_patch(Rectangle(corner, 1, 1, fill=False, lw=0.5, color="0.4"))
        ax.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"{name}\n{100 * off.float().mean():.2f}% off the board (red)", fontsize=9)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"\nwrote {table} and {args.out}")


if __name__ == "__main__":
    main()
