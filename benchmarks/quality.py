"""Sample quality at equal budget: every method of benchmarks/methods.py, ours and the peers', with the same
network, steps, batch, optimizer, EMA and seeds on each task. Plain torch loop, no Lightning.

Tasks (``--datasets``), each with the recipe of its quickstart-style config:
- 2-D data (checkerboard, moons, ...) and the Gaussian: the quickstart's recipe (configs/quickstart.yaml) as it was
  until 2026-12-02, the 2-D MLP (width 256, depth 4), Adam 1e-3 with cosine decay to 0, batch 256 of fresh data
  each step, EMA 0.995 (evaluated). The quickstart now trains at 3e-3: ``--recipe lr=3e-3`` (the results of
  docs/benchmarks.md, section 2, keep their recipe, so an interrupted run still continues them). Judged by sliced
  Wasserstein-2 (SW) and energy distance (ED) of 5000 samples (``--eval_n``; ED on 10 000 at most) against as
  many fresh data samples, at 1 and 2 steps (and 100 for flow matching); on the Gaussian, the RMS error of the
  K-step map against the exact flow map Phi_{1->0}(e) (DESIGN.md section 1b) instead. The tables' first row is
  the metrics' floor at that sample size: a second fresh draw of the data against the same reference (SW about
  0.02-0.05 at 5000 samples, 0.007-0.015 at 50 000), which every method's figure contains.
- ``ode`` (gradient flow from noisy endpoints, configs/ode/) and ``control`` (point mass supervised with its
  trajectories, configs/control/): the same MLP and recipe on the task's 20 000 training trajectories. Judged
  by the RMS distance to the true path over the K-step chain's states from 5000 (``--eval_n``) fresh starts
  (``traj_1`` is the end point's error; ``traj_2`` averages the midpoint and the end); 100 steps: the end point's.
  Ours only: the peers cannot read a paired start or a path.
- ``digits``: scikit-learn's 8x8 digits (the 1437 training images) on the small UNet of configs/digits/quick.yaml,
  Adam 2e-3 with cosine decay, batch 64, EMA 0.99, 1500 steps unless ``--steps`` says otherwise. Judged by the
  Frechet distance in the digits classifier's features (``fd_K``; docs/metrics.md) of 1797 samples against
  all 1797 images.

Per seed, under each table: the recommended objective's 1-step (and 2-step) error over the peer MeanFlow's on
the same seed (the 30% target of issue 9), and over 100-step flow matching's (the 1.5x target at a larger budget).

Loss variance: over the last third of the run, of each method's own loss (the peers' losses are scaled
differently: compare within a family).

``--budget time`` gives every method the wall-clock time that the recommended objective needs for
``--steps`` steps: each method's step time is measured first, interleaved in one process, and its
step count scaled by the ratio.

    python benchmarks/quality.py [--steps N] [--seeds 5] [--workers 2] [--budget steps|time]
        [--datasets checkerboard moons gaussian ode control digits] [--methods NAME ...] [--out benchmarks/results]
        [--recipe lr=2e-3 ema_decay=0.999 time_scale=1 ...] [--eval_n 50000]
"""

import argparse
import copy
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from methods import ABLATIONS, FLOW_MATCHING, PEERS, interleaved_medians
from methods import METHODS as OURS_AND_PEERS

from mmf_lightning import sampling
from mmf_lightning.metrics.distances import energy_distance, sliced_wasserstein
from mmf_lightning.nets import MLP, UNet
from mmf_lightning.nets.gaussian import GaussianAverageVelocity
from mmf_lightning.objectives.paths import SampledPath
from mmf_lightning.sources.distributions import DISTRIBUTIONS, sample_distribution

METHODS = OURS_AND_PEERS | ABLATIONS
GAUSSIAN = {"mean": (1.0, -0.5), "std": (0.5, 1.5)}
EVAL_N = 5000
ED_N = 10_000  # the energy distance's samples at most: its cost is quadratic (a minute at 50 000)


class Toy:
    """2-D data from ``mmf_lightning.sources.distributions``, or the Gaussian with its closed-form flow map."""

    lr, batch_size, ema_decay, steps, paired = 1e-3, 256, 0.995, 3000, False
    eval_n = EVAL_N  # set by ``--eval_n``
    net_kwargs: dict = {}  # set by ``--recipe`` (e.g. time_scale=1)

    def __init__(self, name: str):
        self.name = name

    def make_net(self):
        return MLP(**{"dim": 2, "width": 256, "depth": 4, **self.net_kwargs})  # --recipe width=512 overrides

    def draw(self, n: int, g: torch.Generator) -> torch.Tensor:
        return sample_distribution(self.name, n, g, **(GAUSSIAN if self.name == "gaussian" else {}))

    def batch(self, g: torch.Generator) -> dict:
        return {"x": self.draw(self.batch_size, g)}

    def noise(self, seed: int) -> torch.Tensor:
        """The (eval_n, 2) noise every method's samples start from, on this seed."""
        return torch.randn(self.eval_n, 2, generator=torch.Generator().manual_seed(20_000 + seed))

    def reference(self, seed: int) -> torch.Tensor:
        """The seed's fresh data that samples are judged against."""
        return self.draw(self.eval_n, torch.Generator().manual_seed(10_000 + seed))

    def second_draw(self, seed: int) -> torch.Tensor:
        """Another fresh draw of the data: what a perfect sampler would give (the floor's samples)."""
        return self.draw(self.eval_n, torch.Generator().manual_seed(30_000 + seed))

    def evaluate(self, method, net, sample_steps, seed) -> dict[str, float]:
        n, e = self.eval_n, self.noise(seed)
        if self.name == "gaussian":
            exact = GaussianAverageVelocity(torch.tensor(GAUSSIAN["mean"]), torch.tensor(GAUSSIAN["std"]))
            with torch.no_grad():
                target = exact.flow_map(e, torch.zeros(n), torch.ones(n))
            return {
                f"rmse_{k}": (method.sample(net, e, k) - target).square().sum(1).mean().sqrt().item()
                for k in sample_steps
            }
        out = {}
        for k in sample_steps:
            out |= self.distances(method.sample(net, e, k), seed, f"_{k}")
        return out

    def distances(self, x: torch.Tensor, seed: int, suffix: str = "") -> dict[str, float]:
        """SW of the samples ``x`` (eval_n, 2) against the seed's fresh data, and ED of their first ED_N."""
        ref = self.reference(seed)
        return {
            f"sw{suffix}": sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0)),
            f"ed{suffix}": energy_distance(x[:ED_N], ref[:ED_N]),
        }

    def floor(self, seed: int) -> dict[str, float] | None:
        """The metrics of a second fresh draw of the data (what a perfect sampler scores at eval_n samples);
        None on the tasks judged otherwise (the Gaussian's exact map, the trajectories, the digits)."""
        if self.name not in DISTRIBUTIONS:
            return None
        return self.distances(self.second_draw(seed), seed)


class Trajectories(Toy):
    """The ODE task (gradient flow, noisy endpoints) or the point-mass control task (true trajectories)."""

    paired = True

    def __init__(self, name: str):
        from mmf_lightning.data import ODEDataModule, PointMassDataModule
        from mmf_lightning.sources import UniformBox

        self.name = name
        if name == "ode":  # configs/presets/data_ode_gradient_flow.yaml
            dm = ODEDataModule("gradient_flow", source=UniformBox(-2.0, 2.0), observation_noise=0.05)
        else:  # configs/presets/data_point_mass.yaml
            dm = PointMassDataModule(source=UniformBox(-3.0, 3.0), supervision="path")
        dm.setup("fit")
        self.datamodule, self.train = dm, dm.train_set.tensors

    def batch(self, g: torch.Generator) -> dict:
        rows = torch.randint(len(self.train["x"]), (self.batch_size,), generator=g)
        b = {k: v[rows] for k, v in self.train.items()}
        if "path" in b:
            b["path"] = SampledPath(b.pop("path"), b.pop("path_velocity"))
        return b

    def evaluate(self, method, net, sample_steps, seed) -> dict[str, float]:
        g = torch.Generator().manual_seed(20_000 + seed)
        e = self.datamodule.source.sample(self.eval_n, (2,), g)
        truth = self.datamodule.ground_truth(e)  # (K' + 1, N, 2), t = 1 -> 0
        segments = truth.shape[0] - 1
        out = {}
        for k in sample_steps:
            chain = sampling.trajectory(net, method.objective, e, k)[1:]  # (k, N, 2), t = 1 - 1/k ... 0
            if segments % k:  # off the truth's grid: the end point only
                out[f"end_{k}"] = (chain[-1] - truth[-1]).square().sum(-1).mean().sqrt().item()
            else:
                on_grid = truth[segments // k :: segments // k]
                out[f"traj_{k}"] = (chain - on_grid).square().sum(-1).mean().sqrt().item()
        return out


class Digits(Toy):
    """scikit-learn's digits on the small UNet of configs/digits/quick.yaml; Frechet distance in the digits
    classifier's features."""

    lr, batch_size, ema_decay, steps = 2e-3, 64, 0.99, 1500

    def __init__(self, name: str = "digits"):
        from mmf_lightning.data import DigitsDataModule

        self.name = name
        dm = DigitsDataModule(val_fraction=0.2)
        dm.setup("fit")
        self.images = torch.stack([dm.train_set[i]["x"] for i in range(len(dm.train_set))])
        self._reference = None

    def make_net(self):
        return UNet(
            in_channels=1, image_size=8, channels=32, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(), dropout=0.0, **self.net_kwargs,
        )  # fmt: skip

    def batch(self, g: torch.Generator) -> dict:
        return {"x": self.images[torch.randint(len(self.images), (self.batch_size,), generator=g)]}

    def evaluate(self, method, net, sample_steps, seed) -> dict[str, float]:
        from sklearn.datasets import load_digits

        from mmf_lightning.metrics.digits_classifier import DigitsClassifier
        from mmf_lightning.metrics.features import to_uint8
        from mmf_lightning.metrics.fid import make_fid

        fid = make_fid(DigitsClassifier())
        real = torch.tensor(load_digits().images * (255 / 16)).round().to(torch.uint8)[:, None]
        fid.update(real, real=True)
        e = torch.randn((len(real), 1, 8, 8), generator=torch.Generator().manual_seed(20_000 + seed))
        out = {}
        for k in sample_steps:
            fid.reset()  # the real features persist (reset_real_features=False)
            fid.update(to_uint8(method.sample(net, e, k)), real=False)
            out[f"fd_{k}"] = fid.compute().item()
        return out


def task_class(name: str) -> type[Toy]:
    return Trajectories if name in ("ode", "control") else Digits if name == "digits" else Toy


RECIPE_KEYS = ("lr", "batch_size", "ema_decay")  # the rest of a --recipe goes to the network


def task(name: str, recipe: dict | None = None, eval_n: int = EVAL_N) -> Toy:
    """The task, with ``recipe`` (``--recipe``) overriding its optimizer, batch, EMA or network settings, judged
    on ``eval_n`` samples."""
    data = task_class(name)(name)
    data.net_kwargs, data.eval_n = {}, eval_n
    for key, value in (recipe or {}).items():
        if key in RECIPE_KEYS:
            setattr(data, key, type(getattr(data, key))(value))
        else:
            data.net_kwargs[key] = value
    return data


def parse_recipe(items: list[str]) -> dict:
    """``["lr=2e-3", "time_scale=1"]`` -> ``{"lr": 2e-3, "time_scale": 1.0}``, checked on every task's network."""
    recipe = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--recipe takes KEY=VALUE items, got {item!r}")
        recipe[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    return recipe


TASKS = [*DISTRIBUTIONS, "gaussian", "ode", "control", "digits"]


def columns(dataset: str) -> tuple[list[str], str]:
    """(a task's table columns, 1-step first, then 2-step; its 100-step column)."""
    if dataset == "gaussian":
        return ["rmse_1", "rmse_2"], "rmse_100"
    if dataset in ("ode", "control"):
        return ["traj_1", "traj_2"], "end_100"
    if dataset == "digits":
        return ["fd_1", "fd_2"], "fd_100"
    return ["sw_1", "sw_2", "ed_1", "ed_2"], "sw_100"


def train(method_name: str, data: Toy, seed: int, steps: int, factory=None):
    """(EMA network, Method, losses) after ``steps`` optimizer steps; ``factory(net, steps) -> Method`` defaults to
    ``METHODS[method_name]``'s."""
    torch.manual_seed(seed)
    random.seed(seed)  # the peer MeanFlow flips its per-batch coin with Python's random
    net = data.make_net()
    method = (factory or METHODS[method_name][1])(net, steps)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=data.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        loss = method.loss(data.batch(g), step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        method.objective.on_optimizer_step(net, step)
        with torch.no_grad():
            for p_e, p in zip(ema.parameters(), net.parameters()):
                p_e.lerp_(p, 1 - data.ema_decay)
        losses.append(loss.item())
    return ema.eval(), method, losses


def run(job):
    method_name, dataset, seed, steps, recipe, eval_n = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = task(dataset, recipe, eval_n)
    net, method, losses = train(method_name, data, seed, steps)
    res = data.evaluate(method, net, (1, 2, 100) if method_name in FLOW_MATCHING else (1, 2), seed)
    res["loss_var"] = statistics.variance(losses[-max(2, steps // 3) :])
    res["steps"] = steps
    return method_name, dataset, seed, res, time.perf_counter() - t0


def step_times(method_names, dataset, repeats=5, n=40) -> dict[str, float]:
    """Median time of a training step per method (rounds of ``n`` steps, the methods interleaved)."""
    torch.set_num_threads(1)
    data, g = task(dataset), torch.Generator().manual_seed(0)
    fns = {}
    for name in method_names:
        torch.manual_seed(0)
        net = data.make_net()
        method, opt = METHODS[name][1](net, 3000), torch.optim.Adam(net.parameters(), lr=data.lr)

        def step(method=method, opt=opt):
            loss = method.loss(data.batch(g), 2000)  # past the curriculum's warm-up
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[name] = step
    return interleaved_medians(fns, repeats, n)


def summarise(results, methods, datasets, eval_n: int = EVAL_N) -> str:
    lines = []
    for dataset in datasets:
        cols, hundred_key = columns(dataset)
        cols = [*cols, "loss_var"]
        lines += [f"\n### {dataset}\n", "| method | steps | " + " | ".join(cols) + " | 100-step |"]
        lines.append("|---" * (len(cols) + 3) + "|")
        seeds = sorted({s for (_, d, s) in results if d == dataset})
        if seeds and dataset in DISTRIBUTIONS:  # one value per metric, under both step counts
            data = task(dataset, eval_n=eval_n)
            floors = [data.floor(s) for s in seeds]
            cells = [_mean_sd([f[c.rsplit("_", 1)[0]] for f in floors]) if c != "loss_var" else "" for c in cols]
            row = f"| fresh data (the metrics' floor at {eval_n} samples) | | " + " | ".join(cells)
            lines.append(row + f" | {_mean_sd([f['sw'] for f in floors])} |")
        for m in methods:
            runs = [results[(m, dataset, s)] for s in sorted({s for (mm, d, s) in results if mm == m and d == dataset})]
            if not runs:
                continue
            cells = [_mean_sd([r[c] for r in runs]) for c in cols]
            hundred = _mean_sd([r[hundred_key] for r in runs]) if hundred_key in runs[0] else ""
            lines.append(f"| {METHODS[m][0]} | {runs[0]['steps']} | " + " | ".join(cells) + f" | {hundred} |")
        lines.append(_per_seed(results, dataset, cols[:2], hundred_key))
    return "\n".join(lines)


def _mean_sd(values) -> str:
    if len(values) < 2:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def _per_seed(results, dataset, keys, hundred_key) -> str:
    """Per seed, the 1-step (and 2-step) error of the recommended objective and of each ABLATIONS variant over
    the peer MeanFlow's on the same seed (the target: 30% below, a ratio <= 0.7), and its 1-step error over
    100-step flow matching's (the target at a larger budget: <= 1.5)."""
    comparisons = []
    for m in ("recommended", *ABLATIONS):
        comparisons += [(m, "peer_meanflow", "peer MeanFlow", k, key, key, 0.7) for k, key in enumerate(keys, 1)]
        comparisons.append((m, "fm", "100-step flow matching", 1, keys[0], hundred_key, 1.5))
    parts = []
    for ours, other, label, k, key, other_key, target in comparisons:
        seeds = sorted(s for (m, d, s) in results if m == ours and d == dataset and (other, dataset, s) in results)
        if not seeds:
            continue
        ratios = [results[(ours, dataset, s)][key] / results[(other, dataset, s)][other_key] for s in seeds]
        held = sum(q <= target for q in ratios)
        parts.append(
            f"{k}-step: {ours} / {label} = {statistics.mean(ratios):.2f} on average "
            f"({', '.join(f'{q:.2f}' for q in ratios)}); at most {target} in {held} of {len(seeds)} seeds"
        )
    return "\n" + "\n".join(f"- {p}" for p in parts) + "\n" if parts else ""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help="optimizer steps (default: the task's, 3000; digits 1500)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--budget", choices=("steps", "time"), default="steps")
    p.add_argument("--datasets", nargs="+", default=["checkerboard", "moons", "gaussian"], choices=TASKS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument(
        "--recipe",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"change the tasks' recipe for every method ({', '.join(RECIPE_KEYS)}, or a network argument such "
        "as time_scale); results go to quality_<budget>_<recipe>.*",
    )
    p.add_argument(
        "--eval_n",
        type=int,
        default=EVAL_N,
        help="samples (and fresh data, and trajectory starts) each run is judged on; other than 5000, results go to "
        "quality_<budget>_<recipe>_eval_n=<N>.* (the metrics' floor falls as 1/sqrt(N))",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the results")
    args = p.parse_args()
    recipe = parse_recipe(args.recipe)
    if recipe and args.budget == "time":
        p.error("--recipe applies to --budget steps only (the step times are measured with the task's recipe)")
    for d in args.datasets:
        task(d, recipe).make_net()  # a wrong key fails here, before any run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.eval_n < 2:
        p.error(f"--eval_n must be at least 2, got {args.eval_n}")
    suffix = [f"eval_n={args.eval_n}"] if args.eval_n != EVAL_N else []
    stem = out / "_".join([f"quality_{args.budget}", *args.recipe, *suffix])
    if args.budget == "time":
        if len(args.datasets) != 1:
            p.error("--budget time measures the step times on one task: give one dataset")
        args.steps = args.steps or task_class(args.datasets[0]).steps
        counts = _equal_time_steps(args, stem.with_name(stem.name + "_step_counts.json"))
        steps = {(m, args.datasets[0]): n for m, n in counts.items()}
    else:
        steps = {(m, d): args.steps or task_class(d).steps for m in args.methods for d in args.datasets}
    jsonl = stem.with_name(stem.name + ".jsonl")  # not with_suffix: a recipe value such as 0.999 has a dot
    results = _done(jsonl)  # finished jobs of an earlier, interrupted run are kept
    paired = [d for d in args.datasets if task_class(d).paired]
    skipped = sorted(m for m in args.methods if m in PEERS) if paired else []
    if skipped:
        print(f"the peers {skipped} skip the trajectory tasks (they cannot read a paired start or a path)")
    jobs = [
        (m, d, s, steps[m, d], recipe, args.eval_n)
        for s in range(args.seeds)
        for d in args.datasets
        for m in args.methods
        if not (m in PEERS and task_class(d).paired)
    ]
    jobs = [j for j in jobs if results.get(j[:3], {}).get("steps") != j[3]]
    print(f"{len(jobs)} runs to do ({len(results)} already in {jsonl})", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        for i, future in enumerate(as_completed(futures), 1):
            m, d, s, res, secs = future.result()
            results[(m, d, s)] = res
            with jsonl.open("a") as f:
                f.write(json.dumps([m, d, s, res]) + "\n")
            shown = ", ".join(f"{k} {v:.3f}" for k, v in res.items() if k != "steps")
            print(
                f"[{i}/{len(jobs)} {time.perf_counter() - t0:5.0f}s] {d} seed {s} {m} ({secs:.0f}s): {shown}",
                flush=True,
            )
    # the table keeps the rows of earlier commands with this recipe (the same jsonl), after this command's
    results = {k: v for k, v in results.items() if k[0] in METHODS and k[1] in args.datasets}
    earlier = [m for m in METHODS if m not in args.methods and any(k[0] == m for k in results)]
    table = summarise(results, [*args.methods, *earlier], args.datasets, args.eval_n)
    print(table)
    md = stem.with_name(f"{stem.name}_{'_'.join(args.datasets)}.md")
    header = f"`python benchmarks/quality.py {' '.join(sys.argv[1:])}`\n"
    if earlier:
        header += f"\nwith the rows of earlier runs in {jsonl.name} ({', '.join(earlier)})\n"
    md.write_text(header + table + "\n")
    print(f"\nwrote {jsonl} and {md}")


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
