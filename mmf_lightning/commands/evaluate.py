"""``python -m mmf_lightning evaluate CKPT [CKPT ...]``: the paper's metrics for each checkpoint,
written as JSON, as markdown in the layout of the paper's Tables 2 and 3, and as bar charts.

Each checkpoint is evaluated with the data and FID protocol of its run: the ``config.yaml`` that
``fit`` saved beside its ``checkpoints/`` folder, or ``--config`` when given (which then replaces
it). ``--data`` evaluates on other data (e.g. a shifted set, paper section 5.4): it replaces the
config's ``data:`` section, and the FID reference statistics are those of that data.
``--devices N`` runs N processes (Lightning Fabric, DDP): the samples are split across them and
the numbers are the same as on one (docs/metrics.md).
"""

import argparse
import json
from argparse import ArgumentError
from pathlib import Path

from mmf_lightning.commands import CommandParser
from mmf_lightning.runs.configs import (
    check_data,
    data_overrides,
    data_section,
    describe_data,
    instantiate_run,
    reference_name,
    run_config,
    run_uses_lpips,
)
from mmf_lightning.runs.folders import checkpoints_in
from mmf_lightning.runs.reports import OTHER, TABLE_2, TABLE_3, data_notes, log_to_wandb, markdown, row_names

# sample counts of a full evaluation and of --quick (FID: the run's own count, or at most 1000 quick)
FULL = {"num_samples": 1000, "steps": 16, "distance_samples": 5000, "timing_repeats": 50}


QUICK = {"num_samples": 200, "steps": 8, "distance_samples": 2000, "timing_repeats": 5}


QUICK_FID_SAMPLES = 1000


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m mmf_lightning evaluate",
        description="The paper's metrics (Tables 2 and 3) for one or more checkpoints, as JSON and markdown.",
    )
    p.add_argument(
        "ckpt_path", nargs="*", help="checkpoints written by `fit`, run folders (their last.ckpt) or folders of runs"
    )
    p.add_argument(
        "--ckpt_path",
        dest="ckpt_path_option",
        action="extend",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="the same, spelled as in fit/validate/sample (may be repeated, or mixed with positional paths)",
    )
    p.add_argument(
        "--output",
        help="folder for evaluation.json, .md, .png (default: evaluation; evaluation/<name> with --data <name>.yaml)",
    )
    p.add_argument(
        "--wandb",
        action="store_true",
        help="also log the results to a W&B run (project $WANDB_PROJECT or mmf-lightning; under an agent, its run)",
    )
    p.add_argument("--names", nargs="+", help="row names, one per checkpoint (default: the run folders)")
    p.add_argument(
        "--config",
        help="a run config to use instead of the config.yaml beside each checkpoint's run (required for checkpoints "
        "outside a run folder)",
    )
    p.add_argument(
        "--data",
        help="evaluate on this data instead of the config's (e.g. a shifted set): a YAML file of a `data:` section "
        "(class_path, init_args) or a class path; refine it, or the run's data, with --data.init_args.KEY=VALUE",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a first look in about a minute: fewer samples ("
        + ", ".join(f"{k} {v}" for k, v in QUICK.items())
        + "), marked as quick in the report; explicit counts still win",
    )
    p.add_argument("--num_samples", type=int, help=f"samples for path metrics and LPIPS ({FULL['num_samples']})")
    p.add_argument("--steps", type=int, help=f"K: the many-step reference and the path grid ({FULL['steps']})")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--distance_samples", type=int, help=f"low-dimensional data: samples per distance ({FULL['distance_samples']})"
    )
    p.add_argument("--timing_repeats", type=int, help=f"timed batch-1 samples, 0: no timing ({FULL['timing_repeats']})")
    p.add_argument("--fid", choices=["run", "off"], default="run", help="'run': the FID protocol of the run config")
    p.add_argument("--fid_num_samples", type=int, help="override the run's FID sample count (--quick: at most 1000)")
    p.add_argument(
        "--lpips",
        action=argparse.BooleanOptionalAction,
        help="LPIPS metrics on images (default: as the run's PathMetrics, e.g. off for the offline digits; else on)",
    )
    p.add_argument("--lpips_weights_path", help="torchvision's AlexNet weights (else the torch hub cache)")
    p.add_argument(
        "--guidance_scale",
        type=float,
        default=1.0,
        help="classifier-free guidance at sampling time for class-conditional nets (1: none; one extra forward a jump)",
    )
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, auto")
    p.add_argument("--devices", type=int, default=1, help="processes (DDP when > 1)")
    return p


def evaluate_main(argv: list[str]) -> dict:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides, rest = data_overrides(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)} (data options are written --data.init_args.KEY=VALUE)")
    if args.data and args.data.endswith((".yaml", ".yml")) and not Path(args.data).is_file():
        parser.error(f"--data {args.data} does not exist; pass a YAML file of a `data:` section, or a class path")
    given = [*args.ckpt_path, *args.ckpt_path_option]
    if not given:
        parser.error("no checkpoint given; pass one or more, e.g. `evaluate runs/.../checkpoints/last.ckpt`")
    ckpts = []
    for path in given:  # a checkpoint, a run folder (its last.ckpt) or a folder of runs (each run's)
        try:
            ckpts += checkpoints_in(path)
        except FileNotFoundError as err:
            parser.error(str(err))
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # imported once the arguments are checked: `--help` and argument errors answer without torch or Lightning
    from mmf_lightning.figures import save_metrics_figure
    from mmf_lightning.metrics.evaluation import EvaluationSettings, Phases, evaluate_model, truth_protocol
    from mmf_lightning.metrics.ranks import Ranks

    try:
        settings = EvaluationSettings(
            args.num_samples, args.steps, args.batch_size, args.seed, args.distance_samples, args.timing_repeats
        )
    except ValueError as err:
        parser.error(str(err))
    if args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")

    from lightning.fabric import Fabric

    from mmf_lightning.metrics.lpips import LPIPS
    from mmf_lightning.training.module import MeanFlowModule

    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, strategy="ddp" if args.devices > 1 else "auto")
    fabric.launch()
    ranks = Ranks(
        fabric.global_rank, fabric.world_size, lambda t: fabric.all_reduce(t, reduce_op="sum"), fabric.barrier
    )

    # everything that can fail (configs, data, weights) fails here, before any checkpoint is evaluated;
    # runs with the same data and FID protocol (a sweep) share one datamodule and one FID: its
    # extractor is loaded and its reference statistics computed (or read) once
    runs, default_names, data, shared = [], [], {}, {}
    for ckpt in ckpts:
        try:
            config, config_path = run_config(ckpt, args.config)
            data_from = f"--data {args.data}" if args.data else str(config_path)
            if args.data or overrides:
                config = {**config, "data": data_section(args.data or config.get("data"), overrides)}
                data_from += f" {' '.join(overrides)}" if overrides else ""
            key = json.dumps([config.get("data"), config.get("fid") if args.fid == "run" else None], sort_keys=True)
            if key not in shared:
                fid_at_most = QUICK_FID_SAMPLES if args.quick else None
                shared[key] = instantiate_run(config, args.fid == "run", args.fid_num_samples, fid_at_most)
            datamodule, fid = shared[key]
        except (FileNotFoundError, ValueError, ArgumentError) as err:
            message = str(err) if str(ckpt) in str(err) else f"{ckpt}: {err}"
            parser.error(message.replace("\n", " "))
        loaded = MeanFlowModule.load_from_checkpoint(ckpt, map_location="cpu")
        problem = check_data(loaded, datamodule, ckpt, data_from)
        if problem:
            parser.error(problem)
        if args.guidance_scale != 1.0 and not getattr(loaded.net, "num_classes", None):
            parser.error(f"--guidance_scale {args.guidance_scale}: the network of {ckpt} is not class-conditional")
        section = config["data"] if isinstance(config["data"], dict) else data_section(config["data"], [])
        data[ckpt] = {"from": data_from, "data": section, "description": describe_data(section)}
        with_lpips = run_uses_lpips(config) if args.lpips is None else args.lpips
        runs.append((ckpt, config_path, datamodule, fid, with_lpips and hasattr(datamodule, "reference_set")))
        default_names.append((ckpt, config))
    names = args.names or row_names(default_names)
    if len(names) != len(ckpts):
        parser.error(f"--names gives {len(names)} names for {len(ckpts)} checkpoints")
    if len(set(names)) != len(names):
        parser.error(f"row names must differ, got {names}; pass --names")
    lpips = LPIPS(args.lpips_weights_path).to(fabric.device) if any(run[-1] for run in runs) else None
    echo = print if ranks.is_zero else None
    for datamodule, fid in shared.values():
        if fid is not None:
            with Phases(echo)("FID reference statistics", f"{type(datamodule).__name__}, {fid.reference_split} split"):
                fid.prepare(datamodule, fabric.device, ranks)

    results, records = {}, {}
    for i, (name, (ckpt, config_path, datamodule, fid, with_lpips)) in enumerate(zip(names, runs)):
        if echo:
            echo(f"[{i + 1}/{len(runs)}] {name}" + (" (quick: smaller sample counts)" if args.quick else ""))
        module = MeanFlowModule.load_from_checkpoint(ckpt, map_location="cpu").to(fabric.device).eval()
        module.guidance_scale = args.guidance_scale
        phases = Phases(echo)
        metrics = evaluate_model(
            module,
            datamodule,
            settings,
            ranks,
            lpips=lpips if with_lpips else None,
            fid=fid,
            progress=True,
            phases=phases,
        )
        variance = module.loss_variance()
        metrics["loss_variance"] = float(variance) if variance is not None else None
        results[name] = metrics
        records[name] = {"checkpoint": str(ckpt), "config": str(config_path), **data[ckpt], "metrics": metrics}
        records[name]["timings"] = phases.done
        kind, note = truth_protocol(datamodule)
        if note is not None:
            records[name]["trajectory_truth"] = note if kind is None else f"computed on {note}"
        if fid is not None:
            records[name]["fid_protocol"] = {
                "num_samples": fid.num_samples,
                "steps": list(fid.steps),
                "reference_split": fid.reference_split,
                "reference": reference_name(datamodule, fid.reference_split),
                "feature_extractor": type(fid.extractor).__name__,
            }
    if ranks.is_zero:
        default = Path("evaluation") / Path(args.data).stem if args.data else Path("evaluation")
        out = Path(args.output) if args.output else default
        out.mkdir(parents=True, exist_ok=True)
        report = {
            "settings": vars(settings),
            "quick": args.quick,
            "guidance_scale": args.guidance_scale,
            "devices": fabric.world_size,
            "runs": records,
        }
        (out / "evaluation.json").write_text(json.dumps(report, indent=2))
        table = markdown(results) + data_notes(records)
        quick = (
            "**Quick evaluation** (`--quick`: smaller sample counts, for a first look; not comparable with full ones). "
        )
        (out / "evaluation.md").write_text(
            f"# Evaluation\n\n{quick if args.quick else ''}{len(results)} checkpoint(s); definitions in "
            f"docs/metrics.md; settings: {json.dumps(vars(settings))}"
            + (f"; sampled with guidance scale {args.guidance_scale}" if args.guidance_scale != 1.0 else "")
            + f"\n\n{table}"
        )
        save_metrics_figure(results, TABLE_2 + TABLE_3[:1] + TABLE_3[2:4] + OTHER, out / "evaluation.png")
        print(table)
        print(f"wrote {out / 'evaluation.json'}, {out / 'evaluation.md'} and {out / 'evaluation.png'}")
        if args.wandb:
            log_to_wandb(report, results, out)
    return results
