"""Sample quality per (JVP tangent, lambda) on 2-D data, with the project's own objective
(DESIGN.md section 1b; README "Deviations"). Plain torch loop, no Lightning.

2-D MLP (width 256, depth 4), Adam 1e-3, batch 256, uniform (r, t) with 75% of rows r < t,
final weights (no EMA). Quality: sliced Wasserstein-2 of 5000 one-step / two-step samples
against 5000 fresh data samples (noise floor of two fresh sample sets: about 0.02-0.05).
Loss variance: variance of the training loss over the last 1000 steps.

    python benchmarks/lambda_tangent_toy.py [--steps 3000] [--seeds 3] [--workers 2]
"""

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor

import torch

from mmf_lightning.distributions import sample_distribution
from mmf_lightning.metrics import sliced_wasserstein
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import Constant, LinearWarmup, ModularMeanFlow, TimeSampler

ROWS = {
    "lambda = 0, conditional v (MeanFlow stop-grad)": ("conditional", lambda: Constant(0.0)),
    "lambda = 1, conditional v (paper eq. 11)": ("conditional", lambda: Constant(1.0)),
    "curriculum, conditional v (paper eq. 11-12)": ("conditional", lambda: LinearWarmup(1000)),
    "lambda = 1, stopgrad u(z, t, t) (instantaneous)": ("instantaneous", lambda: Constant(1.0)),
    "curriculum, stopgrad u(z, t, t) (ours)": ("instantaneous", lambda: LinearWarmup(1000)),
    "lambda = 1, stopgrad u(z, r, t) (model, eq. 9)": ("model", lambda: Constant(1.0)),
}


def run(job):
    row, dataset, seed, steps, time_scale = job
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tangent, schedule = ROWS[row][0], ROWS[row][1]()
    net = MLP(dim=2, width=256, depth=4, time_scale=time_scale)
    objective = ModularMeanFlow(tangent, TimeSampler("uniform", equal_fraction=0.25))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        loss = objective(net, sample_distribution(dataset, 256, data), lam=schedule(step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    e = torch.randn(5000, 2, generator=data)
    ones, zeros, half = torch.ones(5000), torch.zeros(5000), torch.full((5000,), 0.5)
    with torch.no_grad():
        one = e - net(e, zeros, ones)
        mid = e - 0.5 * net(e, half, ones)
        two = mid - 0.5 * net(mid, zeros, half)
    ref = sample_distribution(dataset, 5000, torch.Generator().manual_seed(10_000 + seed))
    g = torch.Generator().manual_seed(0)
    return (
        row,
        dataset,
        (
            sliced_wasserstein(one, ref, generator=g),
            sliced_wasserstein(two, ref, generator=g),
            statistics.variance(losses[-1000:]),
        ),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--time_scale", type=float, default=10.0, help="the MLP's time-embedding scale")
    p.add_argument("--datasets", nargs="+", default=["checkerboard", "moons"])
    args = p.parse_args()
    jobs = [(row, d, s, args.steps, args.time_scale) for row in ROWS for d in args.datasets for s in range(args.seeds)]
    results: dict = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for i, (row, dataset, res) in enumerate(pool.map(run, jobs), 1):
            results.setdefault((row, dataset), []).append(res)
            print(f"[{i}/{len(jobs)}] {row} / {dataset}: {res[0]:.2f} / {res[1]:.2f}", flush=True)
    head = " | ".join(f"{d} SW 1-step / 2-step | {d} loss var" for d in args.datasets)
    print(f"\n| objective | {head} |\n|---|" + "---|---|" * len(args.datasets))
    for row in ROWS:
        cells = []
        for d in args.datasets:
            rs = results[(row, d)]
            cells.append(f"{statistics.mean(r[0] for r in rs):.2f} / {statistics.mean(r[1] for r in rs):.2f}")
            cells.append(f"{statistics.mean(r[2] for r in rs):.3g}")
        print(f"| {row} | " + " | ".join(cells) + " |")
    print(f"\n(mean of {args.seeds} seeds, {args.steps} steps, time_scale {args.time_scale})")


if __name__ == "__main__":
    main()
