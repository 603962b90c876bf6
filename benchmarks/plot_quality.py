"""Per-seed 1- and 2-step quality of every method in a quality results file, one panel per dataset
and step count (each dot a seed, the bar the mean), for docs/benchmarks.md.

    python benchmarks/plot_quality.py benchmarks/results/quality_steps.jsonl docs/toy_quality_steps.png
"""

import argparse
import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure
from quality import METHODS


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--datasets", nargs="+", default=["checkerboard", "moons"])
    args = p.parse_args()
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    methods = [m for m in METHODS if any(r[0] == m for r in rows)]
    fig = Figure(figsize=(12, 1.2 + 0.42 * len(methods) * len(args.datasets)), layout="constrained")
    axes = fig.subplots(len(args.datasets), 2, squeeze=False)
    for i, dataset in enumerate(args.datasets):
        for j, k in enumerate((1, 2)):
            ax = axes[i, j]
            for y, m in enumerate(methods):
                values = [r[3][f"sw_{k}"] for r in rows if r[0] == m and r[1] == dataset]
                if not values:
                    continue
                ax.barh(y, statistics.mean(values), color="#cfd8e3")
                ax.plot(values, [y] * len(values), "o", color="#1f4e79", markersize=3)
            ax.set_yticks(range(len(methods)), [METHODS[m][0] for m in methods] if j == 0 else [])
            ax.invert_yaxis()
            ax.set_xlim(left=0)
            ax.set_title(f"{dataset}: {k}-step sliced Wasserstein (lower is better)", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
