"""Sample quality at equal budget on 2-D data: every method of benchmarks/methods.py, ours and the peers',
with the same network, steps, batch, optimizer, EMA and seeds. Plain torch loop, no Lightning.

Recipe (the quickstart's, configs/quickstart.yaml): the 2-D MLP (width 256, depth 4), Adam 1e-3 with
cosine decay to 0, batch 256 of fresh data each step, EMA 0.995 (evaluated). Quality of 5000 samples
against 5000 fresh data samples: sliced Wasserstein-2 (SW) and energy distance (ED) at 1 and 2 steps
(and 100 for flow matching); on the Gaussian, the RMS error of the K-step map against the exact flow
map Phi_{1->0}(e) (DESIGN.md section 1b) instead. Loss variance: over the last 1000 steps, of each
method's own loss (the peers' losses are scaled differently: compare within a family).

``--budget time`` gives every method the wall-clock time that the recommended objective needs for
``--steps`` steps: each method's step time is measured first, interleaved in one process, and its
step count scaled by the ratio.

    python benchmarks/toy_quality.py [--steps 3000] [--seeds 5] [--workers 2] [--budget steps|time]
        [--datasets checkerboard moons gaussian] [--methods NAME ...] [--out benchmarks/results]
"""

import argparse
import copy
import json
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from methods import ABLATIONS, FLOW_MATCHING, interleaved_medians
from methods import METHODS as OURS_AND_PEERS

from mmf_lightning.distributions import sample_distribution
from mmf_lightning.metrics.distances import energy_distance, sliced_wasserstein
from mmf_lightning.nets import MLP
from mmf_lightning.nets.gaussian import GaussianAverageVelocity

METHODS = OURS_AND_PEERS | ABLATIONS
GAUSSIAN = {"mean": (1.0, -0.5), "std": (0.5, 1.5)}
EMA_DECAY, LR, BATCH, EVAL_N = 0.995, 1e-3, 256, 5000


def draw(dataset: str, n: int, g: torch.Generator) -> torch.Tensor:
    return sample_distribution(dataset, n, g, **(GAUSSIAN if dataset == "gaussian" else {}))


def train(method_name: str, dataset: str, seed: int, steps: int):
    """(EMA network, Method, losses) after ``steps`` optimizer steps."""
    torch.manual_seed(seed)
    net = MLP(dim=2, width=256, depth=4)
    method = METHODS[method_name][1](net, steps)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    data = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        loss = method.loss(draw(dataset, BATCH, data), step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        method.objective.on_optimizer_step(net, step)
        with torch.no_grad():
            for p_e, p in zip(ema.parameters(), net.parameters()):
                p_e.lerp_(p, 1 - EMA_DECAY)
        losses.append(loss.item())
    return ema.eval(), method, losses


def evaluate(method_name, method, net, dataset, seed) -> dict[str, float]:
    g = torch.Generator().manual_seed(20_000 + seed)
    e = torch.randn(EVAL_N, 2, generator=g)
    steps = (1, 2, 100) if method_name in FLOW_MATCHING else (1, 2)
    out = {}
    if dataset == "gaussian":
        exact = GaussianAverageVelocity(torch.tensor(GAUSSIAN["mean"]), torch.tensor(GAUSSIAN["std"]))
        with torch.no_grad():
            target = exact.flow_map(e, torch.zeros(EVAL_N), torch.ones(EVAL_N))
        for k in steps:
            out[f"rmse_{k}"] = (method.sample(net, e, k) - target).square().sum(1).mean().sqrt().item()
        return out
    ref = draw(dataset, EVAL_N, torch.Generator().manual_seed(10_000 + seed))
    for k in steps:
        x = method.sample(net, e, k)
        out[f"sw_{k}"] = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
        out[f"ed_{k}"] = energy_distance(x, ref)
    return out


def run(job):
    method_name, dataset, seed, steps = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    net, method, losses = train(method_name, dataset, seed, steps)
    res = evaluate(method_name, method, net, dataset, seed)
    res["loss_var"] = statistics.variance(losses[-1000:])
    res["steps"] = steps
    return method_name, dataset, seed, res, time.perf_counter() - t0


def step_times(method_names, dataset, repeats=5, n=40) -> dict[str, float]:
    """Median time of a training step per method (rounds of ``n`` steps, the methods interleaved)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    fns = {}
    for name in method_names:
        torch.manual_seed(0)
        net = MLP(dim=2, width=256, depth=4)
        method, opt = METHODS[name][1](net, 3000), torch.optim.Adam(net.parameters(), lr=LR)

        def step(method=method, opt=opt):
            loss = method.loss(draw(dataset, BATCH, g), 2000)  # past the curriculum's warm-up
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[name] = step
    return interleaved_medians(fns, repeats, n)


def summarise(results, methods, datasets) -> str:
    lines = []
    for dataset in datasets:
        key = "rmse" if dataset == "gaussian" else "sw"
        cols = [f"{key}_1", f"{key}_2"] + ([] if dataset == "gaussian" else ["ed_1", "ed_2"]) + ["loss_var"]
        lines += [f"\n### {dataset}\n", "| method | steps | " + " | ".join(cols) + " | 100-step |"]
        lines.append("|---" * (len(cols) + 3) + "|")
        for m in methods:
            runs = [results[(m, dataset, s)] for s in sorted({s for (mm, d, s) in results if mm == m and d == dataset})]
            if not runs:
                continue
            cells = [_mean_sd([r[c] for r in runs]) for c in cols]
            hundred = _mean_sd([r[f"{key}_100"] for r in runs]) if f"{key}_100" in runs[0] else ""
            lines.append(f"| {METHODS[m][0]} | {runs[0]['steps']} | " + " | ".join(cells) + f" | {hundred} |")
        lines.append(_per_seed(results, dataset, key))
    return "\n".join(lines)


def _mean_sd(values) -> str:
    if len(values) < 2:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def _per_seed(results, dataset, key) -> str:
    """Seeds where the recommended objective's 1-step (and 2-step) error is 30% below the peer MeanFlow's."""
    seeds = sorted(s for (m, d, s) in results if m == "recommended" and d == dataset)
    seeds = [s for s in seeds if ("peer_meanflow", dataset, s) in results]
    if not seeds:
        return ""
    parts = []
    for k in (1, 2):
        ratios = [
            results[("recommended", dataset, s)][f"{key}_{k}"] / results[("peer_meanflow", dataset, s)][f"{key}_{k}"]
            for s in seeds
        ]
        wins = sum(q <= 0.7 for q in ratios)
        parts.append(
            f"{k}-step: recommended / peer MeanFlow = {statistics.mean(ratios):.2f} on average "
            f"({', '.join(f'{q:.2f}' for q in ratios)}); at least 30% below in {wins} of {len(seeds)} seeds"
        )
    return "\n" + "\n".join(f"- {p}" for p in parts) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--budget", choices=("steps", "time"), default="steps")
    p.add_argument("--datasets", nargs="+", default=["checkerboard", "moons", "gaussian"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the results")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"toy_quality_{args.budget}"
    steps = {m: args.steps for m in args.methods}
    if args.budget == "time":
        steps = _equal_time_steps(args, stem.with_name(stem.name + "_step_counts.json"))
    results = _done(stem.with_suffix(".jsonl"))  # finished jobs of an earlier, interrupted run are kept
    jobs = [(m, d, s, steps[m]) for s in range(args.seeds) for d in args.datasets for m in args.methods]
    jobs = [j for j in jobs if results.get(j[:3], {}).get("steps") != j[3]]
    print(f"{len(jobs)} runs to do ({len(results)} already in {stem}.jsonl)", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        for i, future in enumerate(as_completed(futures), 1):
            m, d, s, res, secs = future.result()
            results[(m, d, s)] = res
            with stem.with_suffix(".jsonl").open("a") as f:
                f.write(json.dumps([m, d, s, res]) + "\n")
            shown = ", ".join(f"{k} {v:.3f}" for k, v in res.items() if k != "steps")
            print(
                f"[{i}/{len(jobs)} {time.perf_counter() - t0:5.0f}s] {d} seed {s} {m} ({secs:.0f}s): {shown}",
                flush=True,
            )
    results = {k: v for k, v in results.items() if k[0] in args.methods and k[1] in args.datasets}
    table = summarise(results, args.methods, args.datasets)
    print(table)
    md = stem.with_name(f"{stem.name}_{'_'.join(args.datasets)}.md")
    md.write_text(f"`python benchmarks/toy_quality.py {' '.join(sys.argv[1:])}`\n" + table + "\n")
    print(f"\nwrote {stem}.jsonl and {md}")


def _equal_time_steps(args, path: Path) -> dict[str, int]:
    """Steps per method for the recommended objective's wall-clock time at ``--steps`` steps; measured once
    and kept in ``path``, so an interrupted run continues with the same counts."""
    known = json.loads(path.read_text()) if path.exists() else {}
    todo = [m for m in args.methods if m not in known]
    if todo:
        times = step_times(sorted({*todo, "recommended"}), args.datasets[0])
        ratios = {m: times[m] / times["recommended"] for m in todo}
        print("step time over the recommended objective's:", {m: round(q, 2) for m, q in ratios.items()})
        known |= {m: max(1, round(args.steps / q)) for m, q in ratios.items()}
        path.write_text(json.dumps(known, indent=1))
    return {m: known[m] for m in args.methods}


def _done(path: Path) -> dict:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(m, d, s): r for m, d, s, r in rows}


if __name__ == "__main__":
    main()
