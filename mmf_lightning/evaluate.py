"""``python -m mmf_lightning evaluate CKPT [CKPT ...]``: the paper's metrics for each checkpoint,
written as JSON, as markdown in the layout of the paper's Tables 2 and 3, and as bar charts.

Each checkpoint is evaluated with the data and FID protocol of its run (the ``config.yaml`` that
``fit`` saved beside its ``checkpoints/`` folder, or ``--config``). ``--devices N`` runs N
processes (Lightning Fabric, DDP): the samples are split across them and the numbers are the
same as on one (docs/metrics.md).
"""

import argparse
import json
from pathlib import Path

import yaml

from mmf_lightning.metrics.evaluation import EvaluationSettings, evaluate_model
from mmf_lightning.metrics.ranks import Ranks
from mmf_lightning.plots import save_metrics_figure

TABLE_2 = [
    ("FID ↓", "fid_1step"),
    ("1-Step Error ↓", "one_step_error"),
    ("Inference Time (s) ↓", "inference_time"),
    ("LPIPS ↓", "lpips_diversity"),
]
TABLE_3 = [
    ("D_path ↓", "d_path"),
    ("1-Step MSE ↓", "one_step_error"),
    ("Smoothness ↓", "smoothness"),
    ("LPIPS (Path) ↓", "lpips_path"),
    ("Final FID ↓", "fid_1step"),
]
OTHER = [
    ("Loss variance ↓", "loss_variance"),
    ("FID, 2 steps ↓", "fid_2step"),
    ("LPIPS diversity std", "lpips_diversity_std"),
    ("SW, 1 step ↓", "sw_1step"),
    ("SW, 2 steps ↓", "sw_2step"),
    ("Energy, 1 step ↓", "energy_1step"),
    ("Energy, 2 steps ↓", "energy_2step"),
    ("Path error ↓", "path_error"),
    ("End error ↓", "end_error"),
    ("1-step error vs truth ↓", "one_step_error_truth"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmf_lightning evaluate",
        description="The paper's metrics (Tables 2 and 3) for one or more checkpoints, as JSON and markdown.",
    )
    p.add_argument("ckpt_path", nargs="+", help="checkpoints written by `fit` (e.g. the runs of a sweep)")
    p.add_argument("--output", default="evaluation", help="folder for evaluation.json and evaluation.md")
    p.add_argument("--names", nargs="+", help="row names, one per checkpoint (default: the run folders)")
    p.add_argument("--config", help="run config for checkpoints without a config.yaml beside their run")
    p.add_argument("--num_samples", type=int, default=1000, help="samples for path metrics and LPIPS")
    p.add_argument("--steps", type=int, default=16, help="K: the many-step reference and the path grid")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distance_samples", type=int, default=5000, help="low-dimensional data: samples per distance")
    p.add_argument("--timing_repeats", type=int, default=50, help="timed batch-1 samples (0: no timing)")
    p.add_argument("--fid", choices=["run", "off"], default="run", help="'run': the FID protocol of the run config")
    p.add_argument("--fid_num_samples", type=int, help="override the run's FID sample count")
    p.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=True, help="LPIPS metrics on images")
    p.add_argument("--lpips_weights_path", help="torchvision's AlexNet weights (else the torch hub cache)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, auto")
    p.add_argument("--devices", type=int, default=1, help="processes (DDP when > 1)")
    return p


def run_config(ckpt: Path, fallback: str | None) -> tuple[dict, Path]:
    """The config ``fit`` saved for the run of ``ckpt`` (``<run>/config.yaml`` beside
    ``<run>/checkpoints/``), else ``fallback``."""
    candidates = [ckpt.parent.parent / "config.yaml"] if ckpt.parent.name == "checkpoints" else []
    candidates += [Path(fallback)] if fallback else []
    for path in candidates:
        if path.is_file():
            return yaml.safe_load(path.read_text()), path
    looked = ", ".join(map(str, candidates)) or "nowhere (the checkpoint is not in a run's checkpoints/ folder)"
    raise FileNotFoundError(f"no run config for {ckpt}: looked at {looked}; pass --config with the run's config.yaml")


def instantiate_run(config: dict, with_fid: bool, fid_num_samples: int | None):
    """The run's datamodule and (when configured and asked for) its FID callback."""
    import lightning as L
    from jsonargparse import ArgumentParser

    from mmf_lightning.callbacks import FID

    if "data" not in config:
        raise ValueError("the run config has no `data` section")
    fid_config = config.get("fid") if with_fid else None
    if fid_config is not None and fid_num_samples is not None:
        fid_config = {**fid_config, "init_args": {**fid_config.get("init_args", {}), "num_samples": fid_num_samples}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    parser.add_subclass_arguments(FID, "fid", required=False)
    objects = parser.instantiate(parser.parse_object({"data": config["data"], "fid": fid_config}))
    return objects.data, objects.fid


def row_name(ckpt: Path, config: dict) -> str:
    """``<run name>/version_<n>`` (the logger's name, e.g. ``digits/lambda1``) for a run's
    last.ckpt, with ``@<checkpoint>`` for its other checkpoints."""
    if ckpt.parent.name != "checkpoints":
        return str(ckpt.with_suffix(""))
    run = ckpt.parent.parent
    logger = (config.get("trainer") or {}).get("logger") or {}
    name = (logger.get("init_args") or {}).get("name") if isinstance(logger, dict) else None
    return f"{name or run.parent.name}/{run.name}" + ("" if ckpt.stem == "last" else f"@{ckpt.stem}")


def markdown(results: dict[str, dict[str, float]]) -> str:
    def table(title: str, columns: list[tuple[str, str]]) -> str:
        columns = [(head, key) for head, key in columns if any(key in m for m in results.values())]
        if not columns:
            return ""
        lines = [f"### {title}", "", "| Model | " + " | ".join(h for h, _ in columns) + " |"]
        lines.append("|" + "---|" * (len(columns) + 1))
        for name, metrics in results.items():
            cells = [f"{metrics[key]:.4g}" if metrics.get(key) is not None else "–" for _, key in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    parts = [
        table("Table 2: sample quality and cost", TABLE_2),
        table("Table 3: path and generation quality", TABLE_3),
        table("Stability, distances and trajectory errors", OTHER),
    ]
    return "\n".join(p for p in parts if p)


def evaluate_main(argv: list[str]) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    ckpts = [Path(c) for c in args.ckpt_path]
    for ckpt in ckpts:
        if not ckpt.is_file():
            parser.error(f"checkpoint {ckpt} does not exist")
    try:
        settings = EvaluationSettings(
            args.num_samples, args.steps, args.batch_size, args.seed, args.distance_samples, args.timing_repeats
        )
    except ValueError as err:
        parser.error(str(err))
    if args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")

    from lightning.fabric import Fabric
    from tqdm.auto import tqdm

    from mmf_lightning.metrics.lpips import LPIPS
    from mmf_lightning.module import MeanFlowModule

    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, strategy="ddp" if args.devices > 1 else "auto")
    fabric.launch()
    ranks = Ranks(
        fabric.global_rank, fabric.world_size, lambda t: fabric.all_reduce(t, reduce_op="sum"), fabric.barrier
    )

    # everything that can fail (configs, data, weights) fails here, before any checkpoint is evaluated
    runs, default_names = [], []
    for ckpt in ckpts:
        config, config_path = run_config(ckpt, args.config)
        datamodule, fid = instantiate_run(config, args.fid == "run", args.fid_num_samples)
        runs.append((ckpt, config_path, datamodule, fid))
        default_names.append(row_name(ckpt, config))
    names = args.names or default_names
    if len(names) != len(ckpts):
        parser.error(f"--names gives {len(names)} names for {len(ckpts)} checkpoints")
    if len(set(names)) != len(names):
        parser.error(f"row names must differ, got {names}; pass --names")
    images = any(hasattr(dm, "reference_set") for _, _, dm, _ in runs)
    lpips = LPIPS(args.lpips_weights_path).to(fabric.device) if images and args.lpips else None
    for _, _, datamodule, fid in runs:
        if fid is not None:
            fid.prepare(datamodule, fabric.device, ranks)

    results, records = {}, {}
    for name, (ckpt, config_path, datamodule, fid) in tqdm(
        list(zip(names, runs)), desc="checkpoints", disable=not ranks.is_zero
    ):
        module = MeanFlowModule.load_from_checkpoint(ckpt, map_location="cpu").to(fabric.device).eval()
        is_image = hasattr(datamodule, "reference_set")
        metrics = evaluate_model(
            module, datamodule, settings, ranks, lpips=lpips if is_image else None, fid=fid, progress=True
        )
        variance = module.loss_variance()
        metrics["loss_variance"] = float(variance) if variance is not None else None
        results[name] = metrics
        records[name] = {"checkpoint": str(ckpt), "config": str(config_path), "metrics": metrics}
        if fid is not None:
            records[name]["fid_protocol"] = {
                "num_samples": fid.num_samples,
                "steps": list(fid.steps),
                "reference_split": fid.reference_split,
                "feature_extractor": type(fid.extractor).__name__,
            }
    if ranks.is_zero:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        report = {"settings": vars(settings), "devices": fabric.world_size, "runs": records}
        (out / "evaluation.json").write_text(json.dumps(report, indent=2))
        table = markdown(results)
        (out / "evaluation.md").write_text(
            f"# Evaluation\n\n{len(results)} checkpoint(s); definitions in docs/metrics.md; settings: "
            f"{json.dumps(vars(settings))}\n\n{table}"
        )
        save_metrics_figure(results, TABLE_2 + TABLE_3[:1] + TABLE_3[2:4] + OTHER, out / "evaluation.png")
        print(table)
        print(f"wrote {out / 'evaluation.json'}, {out / 'evaluation.md'} and {out / 'evaluation.png'}")
    return results
