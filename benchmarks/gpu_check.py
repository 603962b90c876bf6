"""One prepared check of everything that needs a GPU, in one short run: the cost, memory and throughput of each
objective's training step on the CIFAR-10 UNet and the latent DiT-B/2, host syncs in the real training loop, two short
real runs, FID in validation, and the optional flash attention kernel against the plain one. On one H100 it is meant
to finish in under 8 minutes (each section has a time budget and says what it skipped).

Sections (``--sections``; all by default):
- ``cost``: the step of flow matching, lambda = 0, lambda = 1 (conditional tangent), the recommended objective
  (instantaneous tangent, lambda = 1, after the curriculum) and its finite difference, under bf16-mixed, on the UNet of
  configs/presets/unet_cifar10.yaml (batch 128) and the DiT of configs/latent/imagenet256_dit_b2.yaml (batch 64):
  time as a ratio over flow matching (CUDA events, warm-up, interleaved rounds, median), peak memory, images per
  second; eager and compiled (``nets.compiled.CompiledNet``).
- ``syncs``: 20 training steps of each config's module through the real Lightning loop under
  ``torch.cuda.set_sync_debug_mode("warn")``; a sync outside the steps where one is meant to happen (logging every
  ``log_every_n_steps``, the skip guard's check every ``skip_check_every_n_steps``) fails, naming its line.
- ``runs``: configs/digits/quick.yaml end to end, and 500 steps of configs/cifar10/mmf_curriculum_instantaneous.yaml
  on synthetic CIFAR-shaped data (it times the pipeline, not the quality): seconds a step, and the hours of the
  config's 800k steps.
- ``fid``: one FID pass of validation with the CIFAR-10 config's Inception when its weights are in the hub cache,
  else the digits FID: time and peak memory.
- ``attention``: ``DiT(attention="jvp_flash")`` (the ``flash`` extra) against the plain attention: value, tangent and
  the lambda = 1 parameter gradient within bf16 tolerance, and time and peak memory at 256 and 1024 tokens.

``--tiny`` runs every section on small nets for a few steps (on the CPU when there is no GPU, compiled with
torch.compile's eager backend): the suite runs it (tests/test_gpu_check.py), so the script cannot rot before a GPU
comes.

    python benchmarks/gpu_check.py [--tiny] [--sections cost syncs runs fid attention] [--out benchmarks/results]
"""

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import lightning as L
import torch

from mmf_lightning.data.base import DataModuleBase, DictDataset

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("cost", "syncs", "runs", "fid", "attention")
# name -> (tangent, lambda, finite difference step); None: flow matching
OBJECTIVES = {
    "fm": None,
    "lam0": ("conditional", 0.0, None),
    "lam1": ("conditional", 1.0, None),
    "recommended": ("instantaneous", 1.0, None),
    "fd": ("instantaneous", 1.0, 1e-3),
}
NETS = {  # name -> (config, batch, tiny overrides of the net's init_args, tiny batch)
    "unet_cifar10": (
        "configs/cifar10/mmf_curriculum_instantaneous.yaml",
        128,
        {
            "channels": 16,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [8],
            "image_size": 16,
            "dropout": 0.0,
            "groups": 8,
        },
        4,
    ),
    "dit_b2": (
        "configs/latent/imagenet256_dit_b2.yaml",
        64,
        {"width": 64, "depth": 2, "heads": 2, "image_size": 8},
        4,
    ),
}


class Clock:
    """Seconds between marks: CUDA events on a GPU (no sync per step), the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, fn, n: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000 / n
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n


def config_section(config: str, key: str) -> dict:
    from mmf_lightning.runs.configs import config_file

    node = config_file(ROOT / config)
    for part in key.split("."):
        node = node[part]
    return node


def build_net(name: str, tiny: bool):
    from jsonargparse import ArgumentParser
    from torch import nn

    config, _, small, _ = NETS[name]
    section = config_section(config, "model.net")
    if tiny:
        section = {**section, "init_args": {**section.get("init_args", {}), **small}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "net")
    return parser.instantiate_classes(parser.parse_object({"net": section})).net


def objective(name: str, config: str):
    from mmf_lightning.objectives import FlowMatching, ModularMeanFlow, TimeSampler

    if OBJECTIVES[name] is None:
        return FlowMatching(), 0.0
    tangent, lam, step = OBJECTIVES[name]
    times = config_section(config, "model.objective.init_args.time_sampler")
    sampler = TimeSampler(**times.get("init_args", {}))
    return ModularMeanFlow(tangent, sampler, finite_difference_step=step), lam


# -- cost --------------------------------------------------------------------------------------
def measure_step(args, device, net_name: str, name: str, compiled: bool) -> dict:
    """Time (median of rounds after warm-up), peak memory and throughput of one objective's training step."""
    from mmf_lightning.nets.compiled import CompiledNet

    config, batch, _, tiny_batch = NETS[net_name]
    batch = tiny_batch if args.tiny else batch
    torch.manual_seed(0)
    net = build_net(net_name, args.tiny).to(device)
    run_net = CompiledNet(net, **({"backend": "eager"} if args.tiny else {})) if compiled else net
    obj, lam = objective(name, config)
    x = torch.randn(batch, *net.data_shape, device=device)
    y = torch.randint(0, net.num_classes, (batch,), device=device) if net.num_classes else None
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(run_net=run_net, obj=obj, lam=lam, x=x, y=y, opt=opt):
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = obj(run_net, x, y, lam=lam).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    clock = Clock(device)
    warm = clock.time(step, 1 if args.tiny else 3)  # the first steps: compilation, allocator, autotune
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [clock.time(step, 2 if args.tiny else 10) for _ in range(1 if args.tiny else 3)]
    seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "seconds": seconds,
        "first_steps_seconds": warm,
        "peak_mb": peak,
        "images_per_second": batch / seconds,
    }


def cost(args, device, budget: float) -> dict:
    out, t0 = {}, time.monotonic()
    for net_name, (_, batch, _, tiny_batch) in NETS.items():
        batch = tiny_batch if args.tiny else batch
        rows = {}
        for compiled in (False, True):
            for name in OBJECTIVES:
                if compiled and args.tiny and name not in ("fm", "recommended"):
                    continue  # the compiled path, exercised; its ratios are a GPU's question
                if time.monotonic() - t0 > budget:
                    rows[f"{name}{' compiled' if compiled else ''}"] = {"skipped": "time budget"}
                    continue
                try:
                    rows[f"{name}{' compiled' if compiled else ''}"] = measure_step(
                        args, device, net_name, name, compiled
                    )
                except Exception as err:  # a row that cannot run is a finding; the other rows still run
                    rows[f"{name}{' compiled' if compiled else ''}"] = {"error": f"{type(err).__name__}: {err}"[:500]}
        for key, row in rows.items():
            reference = rows.get("fm compiled" if key.endswith("compiled") else "fm", {})
            if "seconds" in row and "seconds" in reference:
                row["time_over_fm"] = row["seconds"] / reference["seconds"]
                if row["peak_mb"] and reference.get("peak_mb"):
                    row["memory_over_fm"] = row["peak_mb"] / reference["peak_mb"]
        out[net_name] = {"batch": batch, "rows": rows}
    return out


# -- the real loop: syncs and short runs ------------------------------------------------------------
class SyncRecorder(L.Callback):
    """CUDA's sync debug mode "warn" during each training batch, and the code line of every sync recorded per step."""

    def __init__(self):
        self.syncs: dict[int, list[str]] = {}
        self._catch = self._caught = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.cuda.set_sync_debug_mode(0)
        self._catch.__exit__(None, None, None)
        lines = [f"{w.filename}:{w.lineno}" for w in self._caught if "synchroniz" in str(w.message)]
        if lines:
            self.syncs[trainer.global_step] = lines


def cli_run(args, config: str, extra: list[str], callbacks=()) -> tuple[float, object]:
    """``fit`` of ``config`` through the CLI, in this process: (seconds, the CLI)."""
    from mmf_lightning.commands.fit import MMFLightningCLI

    folder = tempfile.mkdtemp(prefix="gpu_check_")
    argv = ["fit", "--config", str(ROOT / config), f"--trainer.default_root_dir={folder}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]  # fmt: skip
    for cb in callbacks:
        argv += [f"--trainer.callbacks+={cb}"]
    t0 = time.perf_counter()
    cli = MMFLightningCLI(args=argv)
    return time.perf_counter() - t0, cli


def synthetic(shape, classes: int) -> list[str]:
    return ["--data=gpu_check.SyntheticImages", f"--data.init_args.shape={list(shape)}",
            f"--data.init_args.num_classes={classes}", "--fid=null"]  # fmt: skip


def tiny_net(name: str) -> list[str]:
    return [f"--model.net.init_args.{k}={json.dumps(v)}" for k, v in NETS[name][2].items()]


class StepTimer(L.Callback):
    """The wall clock at the end of each optimizer step from ``skip`` on (synchronised on a GPU)."""

    def __init__(self, skip: int):
        self.skip, self.marks = skip, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.skip:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())


def syncs(args, device) -> dict:
    if device.type != "cuda":
        return {"not_applicable": "no CUDA device: host syncs are a GPU matter (the loop itself ran in `runs`)"}
    out = {}
    for net_name, (config, batch, _, tiny_batch) in NETS.items():
        recorder = SyncRecorder()
        steps = 20
        extra = [f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.precision=bf16-mixed",
                 "--trainer.callbacks=[]", *synthetic(build_net(net_name, True).data_shape if args.tiny else
                 build_net(net_name, False).data_shape, 1000 if "dit" in net_name else 10),
                 f"--data.init_args.batch_size={tiny_batch if args.tiny else batch}",
                 *(tiny_net(net_name) if args.tiny else []), "--model.compile=false"]  # fmt: skip
        from mmf_lightning.commands.fit import MMFLightningCLI

        cli = MMFLightningCLI(args=["--config", str(ROOT / config), *extra], run=False)
        cli.trainer.callbacks.append(recorder)
        cli.trainer.fit(cli.model, cli.datamodule)
        every = cli.trainer.log_every_n_steps
        check = cli.model.hparams.get("skip_check_every_n_steps") or 50
        meant = {s: lines for s, lines in recorder.syncs.items() if s % every == 0 or s % check == 0}
        stray = {s: lines for s, lines in recorder.syncs.items() if s not in meant}
        out[net_name] = {"steps": steps, "meant": meant, "stray": stray, "ok": not stray}
    return out


def runs(args, device) -> dict:
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    out = {}
    steps = 5 if args.tiny else None
    short = [f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0"]
    digits = [f"--trainer.accelerator={accelerator}", *(short if args.tiny else [])]
    seconds, cli = cli_run(args, "configs/digits/quick.yaml", digits)
    out["digits_quick"] = {"steps": cli.trainer.global_step, "seconds": seconds}
    n = 5 if args.tiny else 500
    timer = StepTimer(skip=2 if args.tiny else 50)
    ema_only = '[{"class_path": "mmf_lightning.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9999}}]'
    small = [*tiny_net("unet_cifar10"), "--data.init_args.batch_size=4"] if args.tiny else []
    shape = (3, 16, 16) if args.tiny else (3, 32, 32)
    cifar = [f"--trainer.accelerator={accelerator}", f"--trainer.max_steps={n}", "--trainer.limit_val_batches=0",
             f"--trainer.callbacks={ema_only}",  # the training step's pipeline; LPIPS' weights are not needed
             *synthetic(shape, 10), *small]  # fmt: skip
    from mmf_lightning.commands.fit import MMFLightningCLI

    cli = MMFLightningCLI(args=["--config", str(ROOT / NETS["unet_cifar10"][0]), *cifar,
                                f"--trainer.default_root_dir={tempfile.mkdtemp()}",
                                "--trainer.enable_progress_bar=false"], run=False)  # fmt: skip
    cli.trainer.callbacks.append(timer)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    marks = timer.marks
    per_step = (marks[-1] - marks[0]) / max(1, len(marks) - 1)
    total = config_section(NETS["unet_cifar10"][0], "trainer.max_steps")
    out["cifar10_recommended_synthetic"] = {
        "steps": cli.trainer.global_step,
        "seconds": time.perf_counter() - t0,
        "seconds_per_step": per_step,
        "hours_for_config_steps": per_step * total / 3600,
        "config_steps": total,
    }
    return out


def fid(args, device) -> dict:
    from mmf_lightning.metrics.ranks import Ranks
    from mmf_lightning.metrics.weights import hub_path

    have_inception = hub_path("inception").is_file()
    if have_inception and not args.tiny:
        from mmf_lightning.runs.configs import instantiate_run

        config = {"data": {"class_path": "gpu_check.SyntheticImages", "init_args": {"shape": [3, 32, 32]}},
                  "fid": config_section(NETS["unet_cifar10"][0], "fid")}  # fmt: skip
        datamodule, callback = instantiate_run(config, with_fid=True, fid_num_samples=10_000)
        net = build_net("unet_cifar10", False)
        which = "CIFAR-10 config's Inception (10 000 samples, synthetic reference images)"
    else:
        from mmf_lightning.callbacks import FID
        from mmf_lightning.data import DigitsDataModule
        from mmf_lightning.metrics.digits_classifier import DigitsClassifier
        from mmf_lightning.nets import UNet

        datamodule = DigitsDataModule()
        callback = FID(num_samples=64 if args.tiny else 1797, feature_extractor=DigitsClassifier(),
                       cache_dir=tempfile.mkdtemp())  # fmt: skip
        net = UNet(in_channels=1, image_size=8, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), dropout=0.0)  # fmt: skip
        which = "digits FID" + ("" if have_inception else " (no Inception weights in the hub cache)")
    from mmf_lightning import MeanFlowModule
    from mmf_lightning.objectives import ModularMeanFlow

    module = MeanFlowModule(net, ModularMeanFlow()).to(device).eval()
    datamodule.setup("fit")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    callback.prepare(datamodule, device, Ranks())
    prepared = time.perf_counter() - t0
    values = callback.measure(module, Ranks())
    seconds = time.perf_counter() - t0 - prepared
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"which": which, "num_samples": callback.num_samples, "reference_seconds": prepared,
            "measure_seconds": seconds, "peak_mb": peak, "values": {str(k): v for k, v in values.items()}}  # fmt: skip


def attention(args, device) -> dict:
    try:
        import jvp_flash_attention  # noqa: F401
    except ImportError:
        return {"not_applicable": "the flash extra is not installed (pip install -e '.[flash]')"}
    if device.type != "cuda":
        return {"not_applicable": "no CUDA device (Triton's interpreter fails on this kernel on the CPU)"}
    from mmf_lightning.nets import DiT
    from mmf_lightning.nets.attention import attention_function
    from mmf_lightning.objectives import ModularMeanFlow

    out = {}
    plain, flash = attention_function("plain"), attention_function("jvp_flash")
    for tokens in (256, 1024):
        q, k, v = (torch.randn(4, 12, tokens, 64, device=device, dtype=torch.bfloat16) for _ in range(3))
        dq, dk, dv = (torch.randn_like(q) for _ in range(3))
        row = {}
        for name, fn in (("plain", plain), ("jvp_flash", flash)):
            torch.cuda.reset_peak_memory_stats(device)

            def run(fn=fn, primals=(q, k, v), tangents=(dq, dk, dv)):
                return torch.func.jvp(fn, primals, tangents)

            value, tangent = run()
            clock = Clock(device)
            clock.time(run, 2)
            row[name] = {"seconds": clock.time(run, 10), "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                         "value": value.float(), "tangent": tangent.float()}  # fmt: skip
        scale = row["plain"]["value"].abs().max().item()
        row["value_max_error"] = (row["plain"].pop("value") - row["jvp_flash"].pop("value")).abs().max().item() / scale
        scale = row["plain"]["tangent"].abs().max().item()
        error = (row["plain"].pop("tangent") - row["jvp_flash"].pop("tangent")).abs().max().item() / scale
        row["tangent_max_error"] = error
        out[f"L={tokens}"] = row
    grads = {}
    for backend in ("plain", "jvp_flash"):  # the lambda = 1 gradient, through the tangent of attention
        torch.manual_seed(0)
        net = DiT(in_channels=4, image_size=32, patch_size=2, width=768, depth=2, heads=12, attention=backend)
        net = net.to(device)
        torch.manual_seed(1)
        x = torch.randn(8, 4, 32, 32, device=device)
        with torch.autocast("cuda", torch.bfloat16):
            loss = ModularMeanFlow("instantaneous")(net, x, lam=1.0).loss
        grads[backend] = torch.cat([g.flatten().float() for g in torch.autograd.grad(loss, list(net.parameters()))])
    out["lambda1_gradient_relative_error"] = (
        (grads["plain"] - grads["jvp_flash"]).norm() / grads["plain"].norm()
    ).item()
    out["equal_within_bf16"] = max(out["L=256"]["value_max_error"], out["L=256"]["tangent_max_error"],
                                   out["lambda1_gradient_relative_error"]) < 0.05  # fmt: skip
    return out


# -- reporting --------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    lines = [f"# GPU check ({results['device']}, {results['date']})", "", f"`{results['command']}`", ""]
    for net, part in results.get("cost", {}).items() if isinstance(results.get("cost"), dict) else []:
        if not isinstance(part, dict) or "rows" not in part:
            continue
        header = "| step | time / fm | memory / fm | images/s | ms | peak MB | first steps (s) |"
        lines += [f"## Cost: {net}, batch {part['batch']}", "", header, "|---" * 7 + "|"]
        for name, row in part["rows"].items():
            if "seconds" not in row:
                lines.append(f"| {name} | {row.get('skipped', '')} | | | | | |")
                continue
            memory, peak = row.get("memory_over_fm"), row.get("peak_mb")
            lines.append(
                f"| {name} | {row.get('time_over_fm', float('nan')):.2f}x | {f'{memory:.2f}x' if memory else '-'} "
                f"| {row['images_per_second']:.0f} | {1000 * row['seconds']:.1f} | {f'{peak:.0f}' if peak else '-'} "
                f"| {row['first_steps_seconds']:.1f} |"
            )
        lines.append("")
    for section in ("syncs", "runs", "fid", "attention"):
        if section in results:
            lines += [f"## {section}", "", "```", json.dumps(results[section], indent=1, default=str), "```", ""]
    return "\n".join(lines)


class SyntheticImages(DataModuleBase):
    """Random images of a shape, with labels: the pipeline's cost without a dataset."""

    def __init__(self, shape=(3, 32, 32), num_classes: int = 10, num_items: int = 5000, batch_size: int = 128):
        super().__init__(batch_size, num_workers=0)
        self.data_shape, self.num_classes, self.num_items = tuple(shape), num_classes, num_items

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(self.num_items, *self.data_shape, generator=g) * 2 - 1
        y = torch.randint(0, self.num_classes, (self.num_items,), generator=g)
        self.train_set = self.val_set = DictDataset(x=x, y=y)

    def reference_set(self, split="train"):
        self.setup()
        return self.train_set


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small nets and a few steps: the suite's run (CPU)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--cost_budget", type=float, default=180.0, help="seconds the cost section may take")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # gpu_check.SyntheticImages, for the CLI's --data
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86'})"
    results = {"device": name, "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
               "torch": torch.__version__}  # fmt: skip
    t0 = time.monotonic()
    for section in args.sections:
        print(f"== {section}", flush=True)
        start = time.monotonic()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the sections' own chatter: on stderr
                if section == "cost":
                    results[section] = cost(args, device, args.cost_budget)
                else:
                    results[section] = globals()[section](args, device)
        except Exception as err:  # one section's failure is a finding: the others still run
            results[section] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        results.setdefault("seconds", {})[section] = time.monotonic() - start
        print(json.dumps(results[section], default=str)[:2000], flush=True)
    results["seconds"]["total"] = time.monotonic() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check_tiny" if args.tiny else "gpu_check"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"{stem}.md").write_text(markdown(results))
    print(f"wrote {out / stem}.json and .md ({results['seconds']['total']:.0f} s)")


if __name__ == "__main__":
    main()
