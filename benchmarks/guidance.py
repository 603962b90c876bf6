"""Guidance on class-conditional 2-D data: improved MeanFlow's guidance scale as a network input (one forward a
jump) against classifier-free guidance at sampling time (two), at equal training steps.

Methods, all with label dropout 0.1 and the quickstart's time sampler, MLP, recipe (lr 3e-3) and EMA:
- ``imf``: iMF (configs/recipes/imf_moons.yaml): lambda = 0, the instantaneous tangent, w drawn from [1, 3] per
  row and given to the net; sampled at w in one forward.
- ``recommended_guidance_input``: our recommended curriculum (lambda 0 -> 1) with the same guidance input.
- ``recommended_cfg``: our recommended curriculum on a plain class-conditional net, guided at sampling time
  (``sampling.ClassifierFreeGuidance``: u_null + w (u_y - u_null), a doubled batch).

Judged per class at w = 1, 1.5, 2, 3 and 1 and 2 steps: the sliced Wasserstein distance of 2000 samples of each
class against 2000 fresh samples of that class, averaged over the classes (``sw``), and, on eight Gaussians, the
share of samples farther than 3 standard deviations (0.3) from their class's centre (``off``). Guidance is meant
to trade diversity for fidelity: w > 1 should lower ``off`` and leave ``sw`` near its w = 1 value while
samples stay inside their class.

    python benchmarks/guidance.py [--seeds 3] [--steps 3000] [--workers 1] [--datasets moons eight_gaussians]
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from methods import QUICKSTART_TIMES, ours
from quality import Toy, train

from mmf_lightning import sampling
from mmf_lightning.metrics.distances import sliced_wasserstein
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import ModularMeanFlow
from mmf_lightning.sources.distributions import LABELLED

SCALES = (1.0, 1.5, 2.0, 3.0)
PER_CLASS = 2000
METHODS = {
    "imf": (
        "iMF: lambda = 0, guidance scale as input",
        True,
        ours(ModularMeanFlow("instantaneous", QUICKSTART_TIMES, label_dropout=0.1, guidance_range=(1.0, 3.0))),
    ),
    "recommended_guidance_input": (
        "recommended curriculum, guidance scale as input",
        True,
        ours(
            ModularMeanFlow("instantaneous", QUICKSTART_TIMES, label_dropout=0.1, guidance_range=(1.0, 3.0)),
            "curriculum",
        ),
    ),
    "recommended_cfg": (
        "recommended curriculum, classifier-free guidance at sampling",
        False,
        ours(ModularMeanFlow("instantaneous", QUICKSTART_TIMES, label_dropout=0.1), "curriculum"),
    ),
}


class LabelledToy(Toy):
    """A 2-D distribution with its class labels (``distributions.LABELLED``), on the quickstart's recipe."""

    lr = 3e-3

    def __init__(self, name: str, guidance_input: bool):
        super().__init__(name)
        self.sampler, self.num_classes = LABELLED[name]
        self.guidance_input = guidance_input

    def make_net(self):
        return MLP(dim=2, width=256, depth=4, num_classes=self.num_classes, guidance_input=self.guidance_input)

    def batch(self, g: torch.Generator) -> dict:
        x, y = self.sampler(self.batch_size, g)
        return {"x": x, "y": y}

    def evaluate(self, method, net, seed) -> dict[str, float]:
        g = torch.Generator().manual_seed(10_000 + seed)
        ref_x, ref_y = self.sampler(20 * PER_CLASS * self.num_classes, g)
        y = torch.arange(self.num_classes).repeat_interleave(PER_CLASS)
        e = torch.randn(len(y), 2, generator=torch.Generator().manual_seed(20_000 + seed))
        centres = torch.stack([ref_x[ref_y == c].mean(0) for c in range(self.num_classes)])
        out = {}
        for w in SCALES:
            for k in (1, 2):
                x = sampling.sample(sampling.guided(net, w), method.objective, e, k, y)
                sw = [
                    sliced_wasserstein(
                        x[y == c], ref_x[ref_y == c][:PER_CLASS], generator=torch.Generator().manual_seed(0)
                    )
                    for c in range(self.num_classes)
                ]
                out[f"sw_{k}_w{w:g}"] = statistics.mean(sw)
                if self.name == "eight_gaussians":
                    out[f"off_{k}_w{w:g}"] = ((x - centres[y]).norm(dim=1) > 0.3).float().mean().item()
        return out


def run(job):
    method_name, dataset, seed, steps = job
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    label, guidance_input, factory = METHODS[method_name]
    data = LabelledToy(dataset, guidance_input)
    net, method, _ = train(method_name, data, seed, steps, factory)
    return method_name, dataset, seed, data.evaluate(method, net, seed), time.perf_counter() - t0


def summarise(results: dict, datasets) -> str:
    lines = []
    for d in datasets:
        lines += [f"\n### {d}\n", "| method | forwards a jump | " + " | ".join(f"w = {w:g}" for w in SCALES) + " |"]
        lines.append("|---|---|" + "---|" * len(SCALES))
        for m, (label, guidance_input, _) in METHODS.items():
            runs = [r for (mm, dd, _), r in sorted(results.items()) if mm == m and dd == d]
            if not runs:
                continue
            for k in (1, 2):
                cells = []
                for w in SCALES:
                    sw = [r[f"sw_{k}_w{w:g}"] for r in runs]
                    cell = f"SW {statistics.mean(sw):.3f} ± {statistics.stdev(sw) if len(sw) > 1 else 0:.3f}"
                    if f"off_{k}_w{w:g}" in runs[0]:
                        cell += f", off {100 * statistics.mean(r[f'off_{k}_w{w:g}'] for r in runs):.1f}%"
                    cells.append(cell)
                forwards = 1 if guidance_input else 2
                lines.append(f"| {label}, {k}-step ({len(runs)} seeds) | {forwards} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--datasets", nargs="+", default=["moons", "eight_gaussians"], choices=sorted(LABELLED))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "guidance.jsonl"
    results = {}
    if jsonl.exists():  # an interrupted run continues
        for line in jsonl.read_text().splitlines():
            m, d, s, steps, res = json.loads(line)
            if steps == args.steps:
                results[(m, d, s)] = res
    jobs = [
        (m, d, s, args.steps)
        for s in range(args.seeds)
        for d in args.datasets
        for m in args.methods
        if (m, d, s) not in results
    ]
    print(f"{len(jobs)} runs to do ({len(results)} already in {jsonl})", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, future in enumerate(as_completed([pool.submit(run, j) for j in jobs]), 1):
            m, d, s, res, secs = future.result()
            results[(m, d, s)] = res
            with jsonl.open("a") as f:
                f.write(json.dumps([m, d, s, args.steps, res]) + "\n")
            shown = ", ".join(f"{k} {v:.3f}" for k, v in res.items() if k.startswith(("sw_1", "off_1")))
            print(f"[{i}/{len(jobs)} {time.perf_counter() - t0:5.0f}s] {d} seed {s} {m} ({secs:.0f}s): {shown}")
    results = {k: v for k, v in results.items() if k[0] in args.methods and k[1] in args.datasets}
    table = summarise(results, args.datasets)
    print(table)
    md = out / f"guidance_{'_'.join(args.datasets)}.md"
    md.write_text(f"`python benchmarks/guidance.py {' '.join(sys.argv[1:])}`\n" + table + "\n")
    print(f"\nwrote {jsonl} and {md}")


if __name__ == "__main__":
    main()
