"""Cost of each objective's training step over a flow-matching step, on the same network and batch,
and the cost of sampling, in one run.

``--net unet``: the UNet of configs/presets/unet_cifar10.yaml (dropout off), a 32 x 3 x 32 x 32 batch.
``--net mlp``: the quickstart's 2-D MLP (width 256, depth 4), a batch of 256.
``--net dit``: a DiT-S/2 (width 384, depth 12, 6 heads; ``--width --depth --heads``) on 4 x 32 x 32 latents, a batch
of 8.

Rows:
- fixed shares of rows with r < t (the targets of issue 9 are stated for these), with the conditional tangent;
- every method of benchmarks/methods.py as a new user trains it: its own time sampler (the quickstart's for
  ours), after the curriculum's warm-up (lambda = 1), and the peers' MeanFlow, RectifiedFlow and torchcfm
  when the ``bench`` extra is installed;
- sampling: a 1-step sample of the recommended objective and 2-, 4- and 100-step flow matching, over one
  bare network forward on the same batch;
- torch.compile (``MeanFlowModule(compile=True)``, ``nets.compiled.CompiledNet``): time per training
  step of flow matching and of the recommended objective, eager and compiled, after the compilation (timed
  apart); the compiled step over the compiled flow-matching step; whether the compiled loss equals the eager one.

Arithmetic: the floating-point operations of one step (loss and backward; matmuls and convolutions, as
``torch.utils.flop_counter`` counts them) over flow matching's: the floor of a time ratio that removing
per-call overhead can reach.
Time: all rows in one process, interleaved, median of ``--repeats`` rounds (each round ``--inner`` steps).
Peak memory: each row in a fresh process; the peak resident set during one step minus the resident set
before it, with glibc told to return freed large blocks to the OS (MALLOC_MMAP_THRESHOLD_), so the peak
tracks live tensors (meaningful for the UNet; the MLP's few MB are allocator noise). Ratios are the
figures; absolute numbers on a shared CPU are noise.

    python benchmarks/jvp_cost.py [--net unet|mlp|dit] [--channels 128] [--batch 32] [--repeats 3]
"""

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import time

import torch
from methods import ABLATIONS, METHODS, PEERS, interleaved_medians
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmf_lightning.nets import MLP, DiT, UNet
from mmf_lightning.nets import jvp_layers as J
from mmf_lightning.nets.compiled import CompiledNet
from mmf_lightning.objectives import FlowMatching, ModularMeanFlow, TimeSampler, linear_path
from mmf_lightning.sampling import sample

# name -> (description, lambda, fraction of rows with r < t)
FIXED = {
    "fm": ("flow matching (reference)", None, 0.0),
    "lam0_all": ("lambda = 0, every row r < t", 0.0, 1.0),
    "lam1_all": ("lambda = 1, every row r < t", 1.0, 1.0),
    "lam0_25": ("lambda = 0, 25% of rows r < t", 0.0, 0.25),
    "naive0_all": ("naive: one grad-enabled torch.func.jvp, torch.nn layers, lambda = 0", 0.0, 1.0),
    "naive1_all": ("naive: one grad-enabled torch.func.jvp, torch.nn layers, lambda = 1", 1.0, 1.0),
}
TARGETS = {"lam0_all": (2.0, 1.1), "lam1_all": (3.0, 3.0), "lam0_25": (1.35, None), "recommended": (2.0, None)}
SAMPLING = {"forward": "one network forward (reference)", "rec_1": "recommended, 1 step"} | {
    f"fm_{k}": f"flow matching, {k} steps" for k in (2, 4, 100)
}


def variants(args) -> dict[str, str]:
    """Every training-step row: name -> description."""
    fixed = {k: d for k, (d, _, _) in FIXED.items() if args.net == "unet" or not k.startswith("naive")}
    methods = {
        f"method:{k}": label
        for k, (label, _) in METHODS.items()
        if k not in PEERS or importlib.util.find_spec(PEERS[k]) is not None
    }
    if args.net == "mlp":  # what the explicit MLP.jvp saves (the same rows through torch.func.jvp); a cheaper share
        methods |= {f"func_jvp:{k}": f"{METHODS[k][0]}, torch.func.jvp" for k in ("meanflow_stopgrad", "recommended")}
        methods["method:recommended_half_fm"] = ABLATIONS["recommended_half_fm"][0]
    return fixed | methods


class _WithoutExplicitJVP(nn.Module):
    """The same network, hiding its explicit ``jvp``: u_and_dudt then runs torch.func.jvp."""

    def __init__(self, net):
        super().__init__()
        self.net, self.data_shape, self.num_classes = net, net.data_shape, net.num_classes

    def forward(self, z, r, t, y=None):
        return self.net(z, r, t, y)


def build(args):
    torch.manual_seed(0)
    if args.net == "mlp":
        net, shape = MLP(dim=2, width=256, depth=4), (2,)
    elif args.net == "dit":  # DiT-S/2 (width 384, depth 12, 6 heads) on 4 x 32 x 32 latents (SD-VAE of 256 px)
        net = DiT(in_channels=4, image_size=32, patch_size=2, width=args.width, depth=args.depth, heads=args.heads)
        shape = (4, 32, 32)
    else:
        net = UNet(
            in_channels=3,
            image_size=32,
            channels=args.channels,
            channel_mult=(2, 2, 2),
            num_res_blocks=args.num_res_blocks,
            attention_resolutions=(16,),
            dropout=0.0,
        )
        shape = (3, 32, 32)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, *shape, generator=g)
    e = torch.randn(args.batch, *shape, generator=g)
    t = 0.5 + 0.5 * torch.rand(args.batch, generator=g)
    r = 0.5 * torch.rand(args.batch, generator=g)
    return net, x, e, r, t


def with_torch_layers(net: nn.Module) -> nn.Module:
    """The same network with torch.nn's Conv2d / GroupNorm / SiLU (their built-in JVP rules)."""
    for name, child in net.named_children():
        if isinstance(child, J.Conv2d):
            new = nn.Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                child.padding,
                bias=child.bias is not None,
            )
        elif isinstance(child, J.GroupNorm):
            new = nn.GroupNorm(child.num_groups, child.num_channels, child.eps)
        elif isinstance(child, J.SiLU):
            new = nn.SiLU()
        else:
            with_torch_layers(child)
            continue
        new.load_state_dict(child.state_dict())
        setattr(net, name, new)
    return net


def make_step(variant, net, x, e, r, t):
    """(the network the step trains, a function returning the step's loss)."""
    if variant.startswith(("method:", "func_jvp:")):
        kind, name = variant.split(":", 1)
        trained = _WithoutExplicitJVP(net) if kind == "func_jvp" else net
        method = (METHODS | ABLATIONS)[name][1](trained, 3000)
        return net, lambda: method.loss({"x": x}, 2000)  # past the curriculum's warm-up (step 1000)
    _, lam, frac = FIXED[variant]
    n_mean = round(frac * len(x))
    r = torch.cat([t[: len(x) - n_mean], r[len(x) - n_mean :]])  # exactly the last n_mean rows have r < t
    if variant == "fm":
        objective = FlowMatching()
        return net, lambda: objective(net, x, e=e).loss
    if variant.startswith("naive"):
        net = with_torch_layers(net)
        z, v = linear_path(x, e, t)
        tr = (t - r)[:, None, None, None]

        def naive():
            u, dudt = torch.func.jvp(net, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
            dudt = dudt if lam else dudt.detach()
            return (u + tr * dudt - v).square().flatten(1).sum(1).mean()

        return net, naive
    # the times the sampler would draw, laid out as it lays them out (r = t rows first: a split by slicing)
    objective = ModularMeanFlow(tangent="conditional", time_sampler=_Fixed(r, t, len(x) - n_mean))
    return net, lambda: objective(net, x, e=e, lam=lam).loss


class _Fixed(TimeSampler):
    """Always draws the same (r, t), the first ``k`` rows with r = t."""

    def __init__(self, r, t, k):
        self.r, self.t, self.k = r, t, k

    def draw(self, n, device="cpu"):
        return self.r, self.t, self.k


COMPILED = ("fm", "recommended")


def measure_compile(args) -> tuple[dict, dict, dict]:
    """(median step time per row, compilation seconds per method, |compiled - eager| of the first loss)."""
    steps, compile_s, first_loss = {}, {}, {}
    for name in COMPILED:
        for kind in ("eager", "compiled"):
            net, x, e, _, _ = build(args)
            trained = CompiledNet(net) if kind == "compiled" else net
            method = METHODS[name][1](trained, 3000)
            opt = torch.optim.Adam(net.parameters(), lr=1e-4)
            step = lambda net=net, m=method, opt=opt, x=x: run_step(net, lambda: m.loss({"x": x}, 2000), opt)  # noqa: E731
            torch.manual_seed(2)
            t0 = time.perf_counter()
            first_loss[kind, name] = method.loss({"x": x}, 2000).item()
            for _ in range(4):  # the times' split point varies: shapes settle after a recompilation
                step()
            if kind == "compiled":
                compile_s[name] = time.perf_counter() - t0
            steps[f"{kind}:{name}"] = step
    loss_diff = {name: abs(first_loss["compiled", name] - first_loss["eager", name]) for name in COMPILED}
    return interleaved_medians(steps, args.repeats, args.inner), compile_s, loss_diff


def run_step(net, loss_fn, opt):
    """One training step: zero the gradients, the loss, backward, Adam."""
    opt.zero_grad(set_to_none=True)
    loss_fn().backward()
    opt.step()


def measure_flops(args, names) -> dict[str, float]:
    """Each row's floating-point operations per step: the mean over ``args.flop_steps`` steps, as the share of
    rows with r = t is drawn per step (and the peer MeanFlow picks a flow-matching batch at random), seeded."""
    out = {}
    for v in names:
        net, loss_fn = make_step(v, *build(args))
        random.seed(0)  # the peer's choice of batch (Python's random)
        torch.manual_seed(0)
        flops = []
        for _ in range(args.flop_steps):
            with FlopCounterMode(display=False) as counter:
                loss_fn().backward()
            flops.append(counter.get_total_flops())
        out[v] = sum(flops) / len(flops)
    return out


def measure_time(args, names):
    """The rows train one network and its Adam state, shared (a copy of the full-size UNet's weights, gradients
    and Adam moments per row would not fit in memory; the arithmetic of a step does not depend on the weights).
    The naive rows, whose layers are swapped for torch's own, share a second one."""
    built, optimizers, steps = {}, {}, {}
    for v in names:
        group = "naive" if v.startswith("naive") else "shared"
        if group not in built:
            built[group] = build(args)
        net, loss_fn = make_step(v, *built[group])
        if id(net) not in optimizers:  # after make_step, which may swap layers (and so parameters)
            optimizers[id(net)] = torch.optim.Adam(net.parameters(), lr=1e-4)
        opt = optimizers[id(net)]
        steps[v] = lambda net=net, loss_fn=loss_fn, opt=opt: run_step(net, loss_fn, opt)
    return interleaved_medians(steps, args.repeats, args.inner)


@torch.no_grad()
def measure_sampling(args) -> dict[str, float]:
    """Each sampling row's median time over one network forward's, timed in the same rounds."""
    net, _, e, _, _ = build(argparse.Namespace(**{**vars(args), "batch": args.sample_batch}))
    net.eval()
    ones, zeros = torch.ones(len(e)), torch.zeros(len(e))

    def forward():
        with torch.no_grad():  # as sampling runs
            return net(e, zeros, ones)

    def flow_matching(k):
        return lambda: sample(net, FlowMatching(), e, k)

    # the short rows get at least 11 rounds (a round of a few forwards is noisy); 100 steps, the given rounds
    short = {"forward": forward, "rec_1": lambda: sample(net, ModularMeanFlow(), e, 1)}
    short |= {f"fm_{k}": flow_matching(k) for k in (2, 4)}
    times = interleaved_medians(short, max(args.repeats, 11), args.inner)
    ratios = {k: v / times["forward"] for k, v in times.items()}
    long = {"forward": forward, "fm_100": flow_matching(100)}
    long = interleaved_medians(long, args.repeats, max(1, args.inner // 4))
    return ratios | {"fm_100": long["fm_100"] / long["forward"]}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory_child(args):
    net, loss_fn = make_step(args.child, *build(args))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    base = _rss_mb()
    run_step(net, loss_fn, opt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak - base}))


def measure_memory(args, names):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = {}
    for v in names:
        cmd = [sys.executable, __file__, "--child", v, "--net", args.net, "--batch", str(args.batch)]
        cmd += ["--channels", str(args.channels), "--num_res_blocks", str(args.num_res_blocks)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=("unet", "mlp", "dit"), default="unet")
    p.add_argument("--width", type=int, default=384, help="DiT width")
    p.add_argument("--depth", type=int, default=12, help="DiT depth")
    p.add_argument("--heads", type=int, default=6, help="DiT attention heads")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--num_res_blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="default: 32 (UNet), 8 (DiT), 256 (MLP)")
    p.add_argument("--sample_batch", type=int, default=None, help="default: 32 (UNet), 8 (DiT), 5000 (MLP)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--inner", type=int, default=None, help="steps per round; default: 1 (UNet, DiT), 20 (MLP)")
    p.add_argument("--flop_steps", type=int, default=None, help="steps the FLOPs are averaged over; 40 (MLP), 3")
    p.add_argument("--skip_compile", action="store_true", help="leave out the torch.compile rows")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch = args.batch or {"unet": 32, "dit": 8, "mlp": 256}[args.net]
    args.inner = args.inner or (20 if args.net == "mlp" else 1)
    args.flop_steps = args.flop_steps or (40 if args.net == "mlp" else 3)
    args.sample_batch = args.sample_batch or {"unet": 32, "dit": 8, "mlp": 5000}[args.net]
    torch.set_num_threads(os.cpu_count() or 1)
    if args.child:
        measure_memory_child(args)
        return
    rows = variants(args)
    what = {
        "unet": f"UNet channels={args.channels} mult=(2,2,2) blocks={args.num_res_blocks}, batch {args.batch}x3x32x32",
        "dit": f"DiT patch 2 width={args.width} depth={args.depth} heads={args.heads}, batch {args.batch}x4x32x32",
        "mlp": f"2-D MLP width 256 depth 4, batch {args.batch}",
    }[args.net]
    print(
        f"{what}, {torch.get_num_threads()} threads; median of {args.repeats} rounds of {args.inner} steps", flush=True
    )
    missing = sorted(k for k in PEERS if f"method:{k}" not in rows)
    if missing:
        print(f"(peer rows {', '.join(missing)} skipped: pip install -e '.[bench]' adds them)")
    mem = measure_memory(args, rows)
    flops = measure_flops(args, rows)
    times = measure_time(args, rows)
    print(f"\n{'training step, over flow matching':<70} {'time':>7} {'memory':>7} {'flops':>7}  target (time, memory)")
    for v, desc in rows.items():
        tr, mr, fr = times[v] / times["fm"], mem[v] / max(mem["fm"], 1e-9), flops[v] / flops["fm"]
        target = None if v.startswith("func_jvp:") else TARGETS.get(v.split(":", 1)[-1])
        note = ""
        if target:
            ok = tr <= target[0] and (target[1] is None or mr <= target[1])
            note = f"  <= {target[0]}x, {'-' if target[1] is None else f'<= {target[1]}x'}  {'ok' if ok else 'MISSED'}"
        print(f"{desc:<70} {tr:6.2f}x {mr:6.2f}x {fr:6.2f}x{note}")
    print(
        f"\nflow matching step: {times['fm'] * 1e3:.1f} ms, peak {mem['fm']:.0f} MB (absolute figures: machine noise), "
        f"{flops['fm'] / 1e9:.3g} GFLOP"
    )
    sampling = measure_sampling(args)
    print(f"\n{f'sampling a batch of {args.sample_batch}, over one network forward':<70} {'time':>7}")
    for k, desc in SAMPLING.items():
        note = "  <= 1.05x  " + ("ok" if sampling[k] <= 1.05 else "MISSED") if k == "rec_1" else ""
        print(f"{desc:<70} {sampling[k]:6.2f}x{note}")
    if args.skip_compile:
        return
    times, compile_s, loss_diff = measure_compile(args)
    header = "torch.compile: time per training step (ms)"
    print(f"\n{header:<52} {'eager':>9} {'compiled':>9} {'speed-up':>9} {'over FM':>8}")
    for name in COMPILED:
        eager, compiled = times[f"eager:{name}"], times[f"compiled:{name}"]
        over_fm = compiled / times["compiled:fm"]
        target = TARGETS.get(name)
        note = f"  <= {target[0]}x {'ok' if over_fm <= target[0] else 'MISSED'}" if target else ""
        print(
            f"{METHODS[name][0]:<52} {1e3 * eager:9.1f} {1e3 * compiled:9.1f} {eager / compiled:8.2f}x "
            f"{over_fm:7.2f}x  (compiled in {compile_s[name]:.0f} s, first loss differs by {loss_diff[name]:.1e})"
            f"{note}"
        )


if __name__ == "__main__":
    main()
