"""Cost of the modular MeanFlow step over a flow-matching step, on the same network and batch:
the UNet of configs/presets/unet_cifar10.yaml (dropout off) and a 32 x 3 x 32 x 32 batch.

Time: all variants in one process, interleaved, median of ``--repeats`` steps each.
Peak memory: each variant in a fresh process; the peak resident set during one step minus the
resident set before it, with glibc told to return freed large blocks to the OS
(MALLOC_MMAP_THRESHOLD_), so the peak tracks live tensors. Ratios are the figures; absolute
numbers on a shared CPU are noise.

    python benchmarks/jvp_cost.py [--channels 128] [--batch 32] [--repeats 3]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from mmf_lightning.nets import UNet
from mmf_lightning.nets import jvp_layers as J
from mmf_lightning.objectives import FlowMatching, ModularMeanFlow, linear_path

# name -> (description, lambda, fraction of rows with r < t)
VARIANTS = {
    "fm": ("flow matching (reference)", None, 0.0),
    "lam0_all": ("lambda = 0, every row r < t", 0.0, 1.0),
    "lam1_all": ("lambda = 1, every row r < t", 1.0, 1.0),
    "lam0_25": ("lambda = 0, 25% of rows r < t", 0.0, 0.25),
    "naive0_all": ("naive: one grad-enabled torch.func.jvp, torch.nn layers, lambda = 0", 0.0, 1.0),
    "naive1_all": ("naive: one grad-enabled torch.func.jvp, torch.nn layers, lambda = 1", 1.0, 1.0),
}
TARGETS = {"lam0_all": (2.0, 1.1), "lam1_all": (3.0, 3.0), "lam0_25": (1.35, None)}


def build(args):
    torch.manual_seed(0)
    net = UNet(
        in_channels=3,
        image_size=32,
        channels=args.channels,
        channel_mult=(2, 2, 2),
        num_res_blocks=args.num_res_blocks,
        attention_resolutions=(16,),
        dropout=0.0,
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    e = torch.randn(args.batch, 3, 32, 32, generator=g)
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
    _, lam, frac = VARIANTS[variant]
    n_mean = round(frac * len(x))
    r = torch.cat([r[:n_mean], t[n_mean:]])  # exactly the first n_mean rows have r < t
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
    objective = ModularMeanFlow(tangent="conditional")
    return net, lambda: objective(net, x, e=e, r=r, t=t, lam=lam).loss


def run_step(net, loss_fn):
    net.zero_grad(set_to_none=True)
    loss_fn().backward()


def measure_time(args):
    net, x, e, r, t = build(args)
    # the naive variants swap layers in place, so they get their own copy of the network
    steps = {v: make_step(v, build(args)[0] if v.startswith("naive") else net, x, e, r, t) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for step in steps.values():  # warm-up
        run_step(*step)
    for _ in range(args.repeats):
        for v, step in steps.items():
            t0 = time.perf_counter()
            run_step(*step)
            times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory_child(args):
    step = make_step(args.child, *build(args))
    base = _rss_mb()
    run_step(*step)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak - base}))


def measure_memory(args):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = {}
    for v in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            v,
            "--channels",
            str(args.channels),
            "--batch",
            str(args.batch),
            "--num_res_blocks",
            str(args.num_res_blocks),
        ]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--num_res_blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.child:
        measure_memory_child(args)
        return
    print(
        f"UNet channels={args.channels} mult=(2,2,2) blocks={args.num_res_blocks}, batch {args.batch}x3x32x32, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} steps",
        flush=True,
    )
    mem = measure_memory(args)
    times = measure_time(args)
    print(f"\n{'variant':<70} {'time':>7} {'memory':>7}  target (time, memory)")
    for v, (desc, _, _) in VARIANTS.items():
        tr, mr = times[v] / times["fm"], mem[v] / mem["fm"]
        target = TARGETS.get(v)
        note = ""
        if target:
            ok = tr <= target[0] and (target[1] is None or mr <= target[1])
            note = f"  <= {target[0]}x, {'-' if target[1] is None else f'<= {target[1]}x'}  {'ok' if ok else 'MISSED'}"
        print(f"{desc:<70} {tr:6.2f}x {mr:6.2f}x{note}")
    print(f"\nflow matching step: {times['fm']:.2f} s, peak {mem['fm']:.0f} MB (absolute figures are machine noise)")


if __name__ == "__main__":
    main()
