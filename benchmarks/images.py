"""Image quality: one-step and two-step samples of every method on scikit-learn's digits, each trained with the
recipe of the config a user would train, judged in two feature spaces against their floors.

The recipe comes from a config file, parsed by the same command line as ``fit`` (``configs/digits/quick.yaml``
unless ``--config`` says otherwise; its includes resolved the same way): the network, the objective with its time
sampler and adaptive weight, the lambda schedule, Adam's settings with the learning-rate warm-up and cosine decay
(``MeanFlowModule.lr_factor``), the EMA decay, the batch, the data and the step count. A method is that config with
command-line overrides (``VARIANTS``), joined with ``+`` (``times_uniform+equal50``: the later one wins where two
set the same key). Names are relative to the config as it is: when it changes, the rows recorded against its old
self are renamed (on 2026-12-08 quick.yaml became lambda = 0 with 75% of rows r = t, and its old ``shipped`` rows
became ``curriculum300+equal0``). The peer MeanFlow keeps its own loss on the config's network, data, optimizer,
EMA and steps.
The training loop is plain torch (no Lightning): the datamodule's own loader, one optimizer step per batch.

Judges, each on as many samples as there are digits (1797), from the same starts for every method:
- ``fd``: the Frechet distance in the features of the digits classifier (``metrics.digits_classifier``), the
  feature space the FID callback of the digits configs uses;
- ``px``: the Frechet distance of the raw pixels (64 grey values in [0, 1]), which no training choice touched.
Their floor: a resample (with replacement) of the real digits against the real digits, per seed.

    python benchmarks/images.py --methods shipped peer_meanflow fm [--steps 1500] [--seeds 5] [--workers 2]
    python benchmarks/images.py --study [--study_seeds 3]     # a recipe study, one lever at a time
    (make bench-images runs the screens of docs/benchmarks/images.md as lists of --methods)

Results: ``benchmarks/results/images_<steps>.jsonl`` (one line per run; an interrupted command continues where it
stopped) and ``images_<steps>.md``; the study's decisions in ``images_study.md``; 1- and 2-step samples of every run
(the first 100 starts) in ``results/images_samples/`` for ``plot_images.py``.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/digits/quick.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
KEPT_SAMPLES = 100  # samples of each run kept for the pictures

_OBJ = "--model.objective.init_args."
_TIMES = _OBJ + "time_sampler.init_args."
_LAMBDA = "--lambda_schedule.schedule"


def _constant_lambda(value: float) -> list[str]:
    return [f"{_LAMBDA}=mmf_lightning.objectives.Constant", f"{_LAMBDA}.init_args.value={value}"]


# name -> (what it changes, command-line overrides of the config, or ``ema_decay=D``: the EMA callback's decay)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "times_uniform": ("uniform times", [f"{_TIMES}distribution=uniform"]),
    "times_ln04_1": ("logit-normal(-0.4, 1) times (MeanFlow's ImageNet)", [f"{_TIMES}mean=-0.4", f"{_TIMES}std=1.0"]),
    "times_ln0_3": ("logit-normal(0, 3) times (wider)", [f"{_TIMES}mean=0.0", f"{_TIMES}std=3.0"]),
    "times_ln2_2": ("logit-normal(-2, 2) times (CIFAR-10's)", [f"{_TIMES}mean=-2.0", f"{_TIMES}std=2.0"]),
    **{
        f"equal{round(100 * f)}": (f"{round(100 * f)}% of rows r = t", [f"{_TIMES}equal_fraction={f}"])
        for f in (0.0, 0.25, 0.5, 0.75, 0.9)
    },
    **{
        name: (f"adaptive weight p = {p}", [f"{_OBJ}weighting_power={p}"])
        for name, p in (("p0", 0.0), ("p05", 0.5), ("p075", 0.75), ("p1", 1.0))
    },
    **{f"lr{lr:g}": (f"learning rate {lr:g}", [f"--model.lr={lr}"]) for lr in (1e-3, 2e-3, 4e-3)},
    **{f"warmup{n}": (f"{n} steps of learning-rate warm-up", [f"--model.lr_warmup_steps={n}"]) for n in (0, 100, 500)},
    **{f"ema{str(d)[2:]}": (f"EMA decay {d}", [f"ema_decay={d}"]) for d in (0.99, 0.995, 0.999)},
    "conditional": ("conditional tangent v = e - x", [f"{_OBJ}tangent=conditional"]),
    "instantaneous": ("instantaneous tangent stopgrad u(z, t, t)", [f"{_OBJ}tangent=instantaneous"]),
    "lam0": ("lambda = 0", _constant_lambda(0.0)),
    "lam05": ("lambda = 0.5", _constant_lambda(0.5)),
    "lam1": ("lambda = 1", _constant_lambda(1.0)),
    **{
        f"curriculum{n}": (
            f"curriculum 0 -> 1 over {n} steps",
            [f"{_LAMBDA}=mmf_lightning.objectives.LinearWarmup", f"{_LAMBDA}.init_args.warmup_steps={n}"],
        )
        for n in (300, 750)
    },
    # other objectives on the same recipe (their rows of the table)
    "fm": (
        "flow matching (uniform times)",
        ["--model.objective=mmf_lightning.objectives.FlowMatching", f"{_TIMES}distribution=uniform"],
    ),
    "ict": (
        "consistency training, stop-gradient target (iCT)",
        ["--model.objective=mmf_lightning.objectives.ConsistencyTraining", f"{_OBJ}target_ema=0.0"],
    ),
}
PEERS = {"peer_meanflow": "peer: rectified-flow-pytorch MeanFlow (its defaults)"}
SHIPPED = "shipped"  # the config as it is
FLOW_MATCHING = ("fm",)

# the levers of the study, in order; each stage tries its variants on the best recipe so far
LEVERS: list[tuple[str, list[str]]] = [
    ("time distribution", ["times_uniform", "times_ln04_1", "times_ln0_3"]),
    ("share of rows with r = t", ["equal25", "equal50", "equal75"]),
    ("adaptive weight power", ["p0", "p05", "p1"]),
    ("learning rate", ["lr0.001", "lr0.004"]),
    ("learning-rate warm-up", ["warmup0", "warmup500"]),
    ("EMA decay", ["ema995", "ema999"]),
    ("tangent", ["conditional"]),
    ("lambda", ["lam0", "lam05", "lam1", "curriculum750"]),
]


def parts(method: str) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]``; ``shipped`` (the config as it is) -> ``[]``; unknown names raise."""
    if method in PEERS:
        return []
    names = [n for n in method.split("+") if n != SHIPPED]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(
            f"unknown variant(s) {unknown} in {method!r}; known: {SHIPPED}, {list(PEERS)}, {list(VARIANTS)}"
        )
    return names


# the variants that set the same thing (a later one replaces an earlier one of its group in ``with_variant``)
GROUPS = {
    "times": "times_", "equal": "equal", "weight": "p", "lr": "lr", "warmup": "warmup", "ema": "ema",
    "tangent": ("conditional", "instantaneous"), "lambda": ("lam", "curriculum"), "objective": ("fm", "ict"),
}  # fmt: skip


def group(name: str) -> str:
    return next(g for g, prefix in GROUPS.items() if name.startswith(prefix))


def with_variant(method: str, variant: str) -> str:
    """``method`` with ``variant`` in place of any variant of its group."""
    kept = [n for n in parts(method) if group(n) != group(variant)]
    return "+".join([*kept, variant])


def lambda_study(best: str) -> list[str]:
    """The lambda study on the best recipe: lambda 0, 0.5, 1 and the curriculum (the best recipe's, else the
    config's), each with the conditional and the instantaneous tangent."""
    curriculum = next((n for n in parts(best) if n.startswith("curriculum")), "curriculum300")
    return [
        with_variant(with_variant(best, lam), tangent)
        for lam in ("lam0", "lam05", "lam1", curriculum)
        for tangent in ("conditional", "instantaneous")
    ]


def label(method: str) -> str:
    if method in PEERS:
        return PEERS[method]
    return (
        "quick.yaml" + "".join(f" + {VARIANTS[n][0]}" for n in parts(method))
        if parts(method)
        else "quick.yaml as shipped"
    )


@dataclass
class Recipe:
    module: nn.Module  # MeanFlowModule: net, objective, source and the optimizer's settings
    datamodule: object
    schedule: object  # the lambda schedule (objectives.schedules)
    ema_decay: float
    steps: int
    gradient_clip_val: float | None


def recipe(method: str, steps: int, seed: int, config: Path = CONFIG) -> Recipe:
    """The config's recipe with ``method``'s overrides, ``steps`` optimizer steps, seeded as ``fit`` seeds it."""
    from mmf_lightning.callbacks import EMAWeightAveraging, LambdaScheduler
    from mmf_lightning.commands.fit import MMFLightningCLI

    overrides = [a for n in parts(method) for a in VARIANTS[n][1] if a.startswith("--")]
    # the EMA decay sits in the config's list of callbacks, which the command line cannot reach into
    ema = [float(a.split("=")[1]) for n in parts(method) for a in VARIANTS[n][1] if a.startswith("ema_decay=")]
    if any(n == "ict" for n in parts(method)):
        overrides.append(f"{_OBJ}total_steps={steps}")  # its discretisation schedule ends at the run's last step
    args = ["--config", str(config), *overrides, f"--trainer.max_steps={steps}", f"--seed_everything={seed}"]
    cli = MMFLightningCLI(args=[*args, "--trainer.logger=false", "--fid=null"], run=False)
    callbacks = cli.trainer.callbacks
    emas = [cb for cb in callbacks if isinstance(cb, EMAWeightAveraging)]
    (scheduler,) = [cb for cb in callbacks if isinstance(cb, LambdaScheduler)]
    decay = ema[-1] if ema else emas[0]._kwargs["avg_fn"].decay if emas else 0.0
    clip = cli.trainer.gradient_clip_val
    return Recipe(cli.model, cli.datamodule, scheduler.schedule, decay, steps, clip)


def train(method: str, rec: Recipe):
    """(EMA network, the objective whose jump samples it, losses) after ``rec.steps`` optimizer steps."""
    from mmf_lightning.training.batches import unpack_batch

    module, net = rec.module, rec.module.net
    objective = module.objective
    hp = module.hparams
    if method in PEERS:
        from methods import _AsPeerMeanFlow
        from rectified_flow_pytorch import MeanFlow

        from mmf_lightning.objectives import ModularMeanFlow

        peer = MeanFlow(_AsPeerMeanFlow(net), data_shape=tuple(net.data_shape))
        objective = ModularMeanFlow()  # the jump the peer's network is sampled with

        def loss_of(b, step):
            return peer(b["x"])
    else:

        def loss_of(b, step):
            x = b["x"]
            e = module.source.sample(x.shape[0], x.shape[1:], device=x.device).to(x.dtype)
            y = b["y"] if getattr(net, "num_classes", None) else None
            lam = rec.schedule(step) if objective.uses_lambda else 0.0
            return objective(net, x, y, lam=lam, step=step, e=e, path=b["path"]).loss

    opt_cls = torch.optim.AdamW if hp.weight_decay > 0 else torch.optim.Adam
    opt = opt_cls(net.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, module.lr_factor(rec.steps))
    ema = copy.deepcopy(net).requires_grad_(False)
    dm = rec.datamodule
    dm.setup("fit")
    losses, step = [], 0
    net.train()
    while step < rec.steps:
        for batch in dm.train_dataloader():
            loss = loss_of(unpack_batch(batch), step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if rec.gradient_clip_val:
                torch.nn.utils.clip_grad_norm_(net.parameters(), rec.gradient_clip_val)
            opt.step()
            sched.step()
            objective.on_optimizer_step(net, step)
            with torch.no_grad():  # Lightning's EMA: the first update copies, then ema <- d ema + (1 - d) w
                for p_e, p in zip(ema.parameters(), net.parameters()):
                    p_e.copy_(p) if step == 0 else p_e.lerp_(p, 1 - rec.ema_decay)
            losses.append(loss.item())
            step += 1
            if step == rec.steps:
                break
    return ema.eval(), objective, losses


# -- judges --------------------------------------------------------------------------------
class Pixels(nn.Module):
    """uint8 grey images (N, 1, H, W) -> their pixels in [0, 1] at 8x8 (64 features): a feature space no training
    choice touched. (Any size in, as torchmetrics' FID probes its extractor with a 299x299 image.)"""

    num_features = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if x.shape[-2:] != (8, 8):
            x = nn.functional.interpolate(x.mean(1, keepdim=True), size=(8, 8), mode="area")
        return x.flatten(1)


def real_digits() -> torch.Tensor:
    """All 1797 digits as uint8 (1797, 1, 8, 8), as the digits datamodule scales them."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images * (255 / 16)).round().to(torch.uint8)[:, None]


class Judges:
    """Frechet distances of uint8 images against all real digits, in the digits classifier's features and in
    raw pixels."""

    def __init__(self):
        from mmf_lightning.metrics.digits_classifier import DigitsClassifier
        from mmf_lightning.metrics.fid import make_fid

        self.real = real_digits()
        self.fids = {"fd": make_fid(DigitsClassifier()), "px": make_fid(Pixels())}
        for fid in self.fids.values():
            fid.update(self.real, real=True)

    def __call__(self, images: torch.Tensor, suffix: str = "") -> dict[str, float]:
        out = {}
        for key, fid in self.fids.items():
            fid.reset()  # the real features persist (reset_real_features=False)
            fid.update(images, real=False)
            out[key + suffix] = fid.compute().item()
        return out

    def floor(self, seed: int) -> dict[str, float]:
        """A resample of the real digits (as many, with replacement) against them: what a perfect sampler scores."""
        rows = torch.randint(len(self.real), (len(self.real),), generator=torch.Generator().manual_seed(30_000 + seed))
        return self(self.real[rows])


def starts(seed: int) -> torch.Tensor:
    """The (1797, 1, 8, 8) noise every method's samples start from, on this seed."""
    return torch.randn((len(real_digits()), 1, 8, 8), generator=torch.Generator().manual_seed(20_000 + seed))


def run(job) -> tuple:
    method, seed, steps, samples_dir = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    from mmf_lightning import sampling
    from mmf_lightning.metrics.features import to_uint8

    rec = recipe(method, steps, seed)
    net, objective, losses = train(method, rec)
    judges, e = Judges(), starts(seed)
    res, kept = {}, {}
    for k in (1, 2, 100) if method in FLOW_MATCHING else (1, 2):
        with torch.no_grad():
            images = to_uint8(sampling.sample(net, objective, e, k))
        res |= judges(images, f"_{k}")
        kept[f"steps_{k}"] = images[:KEPT_SAMPLES].numpy()
    res["loss_var"] = statistics.variance(losses[-max(2, steps // 3) :])
    res["steps"] = steps
    if samples_dir:
        np.savez_compressed(Path(samples_dir) / f"{method}_seed{seed}_{steps}.npz", **kept)
    return method, seed, res, time.perf_counter() - t0


# -- running and tables ----------------------------------------------------------------------
def done(path: Path) -> dict:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(m, s): r for m, s, r in rows}


def run_jobs(methods, seeds, steps, workers, out: Path, execute: bool = True) -> dict:
    """Runs what ``out/images_<steps>.jsonl`` does not have yet (unless ``execute`` is False); returns every result it
    has."""
    for m in methods:
        parts(m)
    jsonl = out / f"images_{steps}.jsonl"
    samples = out / "images_samples"
    samples.mkdir(parents=True, exist_ok=True)
    results = done(jsonl)
    if not execute:
        return results
    jobs = [(m, s, steps, str(samples)) for s in seeds for m in methods if (m, s) not in results]
    print(f"{len(jobs)} runs to do at {steps} steps ({len(results)} already in {jsonl})", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        for i, future in enumerate(as_completed(futures), 1):
            m, s, res, secs = future.result()
            results[(m, s)] = res
            with jsonl.open("a") as f:
                f.write(json.dumps([m, s, res]) + "\n")
            shown = ", ".join(f"{k} {v:.3g}" for k, v in res.items() if k != "steps")
            print(f"[{i}/{len(jobs)} {time.perf_counter() - t0:5.0f}s] seed {s} {m} ({secs:.0f}s): {shown}", flush=True)
    return results


def mean_sd(values) -> str:
    if len(values) < 2:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


COLUMNS = ["fd_1", "fd_2", "px_1", "px_2", "loss_var"]


def table(results: dict, methods: list[str], steps: int) -> str:
    seeds = sorted({s for (_, s) in results})
    judges = Judges()
    floors = [judges.floor(s) for s in seeds]
    lines = [
        f"| method ({steps} steps) | seeds | " + " | ".join(COLUMNS) + " | fd_100 | px_100 |",
        "|---" * (len(COLUMNS) + 4) + "|",
        f"| real digits resampled (the judges' floor) | {len(seeds)} | "
        + " | ".join(mean_sd([f[c.split("_")[0]] for f in floors]) if c != "loss_var" else "" for c in COLUMNS)
        + " | | |",
    ]
    for m in methods:
        runs = [results[(m, s)] for s in seeds if (m, s) in results]
        if not runs:
            continue
        cells = [mean_sd([r[c] for r in runs]) for c in COLUMNS + ["fd_100", "px_100"] if c in runs[0]]
        cells += [""] * (len(COLUMNS) + 2 - len(cells))
        lines.append(f"| {label(m)} (`{m}`) | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: dict, ours: str, other: str, key: str, other_key: str, target: float) -> str | None:
    seeds = sorted(s for (m, s) in results if m == ours and (other, s) in results)
    if not seeds:
        return None
    q = [results[(ours, s)][key] / results[(other, s)][other_key] for s in seeds]
    return (
        f"`{ours}` {key} / `{other}` {other_key} = {statistics.mean(q):.2f} on average "
        f"({', '.join(f'{v:.2f}' for v in q)}); at most {target} in {sum(v <= target for v in q)} of {len(q)} seeds"
    )


def targets(results: dict, ours: str) -> str:
    """The issue's targets for ``ours``, per seed, in both judges."""
    lines = []
    for j in ("fd", "px"):
        for line in (
            ratios(results, ours, "peer_meanflow", f"{j}_1", f"{j}_1", 0.7),
            ratios(results, ours, "peer_meanflow", f"{j}_2", f"{j}_2", 1.0),
            ratios(results, ours, "fm", f"{j}_1", f"{j}_100", 1.5),
        ):
            if line:
                lines.append(f"- {line}")
    return "\n".join(lines)


def score(results: dict, method: str, seeds) -> float:
    """What the study minimises: the mean over seeds of log fd_1 + log fd_2 (the geometric mean of the 1- and
    2-step distances in the classifier's features)."""
    return statistics.mean(
        math.log(results[(method, s)]["fd_1"]) + math.log(results[(method, s)]["fd_2"]) for s in seeds
    )


def study(args, out: Path) -> None:
    """One lever at a time from the best recipe so far (``LEVERS``), each candidate on ``--study_seeds`` seeds;
    a candidate replaces the best when its score (``score``) is lower."""
    seeds = list(range(args.study_seeds))
    best, log = [], []
    for lever, variants in LEVERS:
        base = "+".join(best) or SHIPPED
        candidates = {v: with_variant(base, v) for v in variants}
        results = run_jobs([base, *candidates.values()], seeds, args.steps, args.workers, out)
        scores = {base: score(results, base, seeds)} | {c: score(results, c, seeds) for c in candidates.values()}
        winner = min(scores, key=scores.get)
        if winner != base:
            best = parts(winner)
        log.append(f"\n### {lever}\n\n" + table(results, list(scores), args.steps) + f"\n\nkept: `{winner}`\n")
        (out / "images_study.md").write_text(
            f"`python benchmarks/images.py {' '.join(sys.argv[1:])}`: score = mean over {len(seeds)} seeds of "
            "log fd_1 + log fd_2 (lower is better)\n" + "".join(log)
        )
        print(log[-1], flush=True)
    (out / "images_best.txt").write_text("+".join(best) or SHIPPED)
    print(f"best recipe: {'+'.join(best) or SHIPPED} (in {out / 'images_best.txt'})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=[SHIPPED, "fm", "peer_meanflow", "ict"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--study", action="store_true", help="run the recipe study (LEVERS) instead of --methods")
    p.add_argument("--study_seeds", type=int, default=3)
    p.add_argument(
        "--lambda_study",
        action="store_true",
        help="add the lambda study on the best recipe of the study (images_best.txt) to --methods",
    )
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--no-run", action="store_true", help="tabulate the results already in the jsonl; run nothing")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.study:
        study(args, out)
        return
    if args.lambda_study:
        best = (out / "images_best.txt").read_text().strip()
        args.methods += [m for m in lambda_study(best) if m not in args.methods]
    results = run_jobs(args.methods, list(range(args.seeds)), args.steps, args.workers, out, execute=not args.no_run)
    shown = [*args.methods, *sorted({m for (m, _) in results} - set(args.methods))]
    text = table(results, shown, args.steps)
    for m in args.methods:
        if m not in PEERS and m not in FLOW_MATCHING and targets(results, m):
            text += f"\n\nTargets of `{m}`:\n" + targets(results, m)
    print(text)
    md = out / f"images_{args.steps}.md"
    md.write_text(f"`python benchmarks/images.py {' '.join(sys.argv[1:])}`\n\n" + text + "\n")
    print(f"\nwrote {md}")


if __name__ == "__main__":
    main()
