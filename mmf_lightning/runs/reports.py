"""The report of ``evaluate``: the paper's Tables 2 and 3 and the other metrics as markdown, the rows' names (several
runs named as ``plot`` names them), the data each was judged on, and the W&B run of an evaluation."""

from pathlib import Path

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


def row_names(evaluated: list[tuple[Path, dict]]) -> list[str]:
    """One row name per checkpoint: for several runs, what each run's config changes against the others' (the labels
    ``plot``, the notebooks and ``sweep`` give the same runs, ``runs.name_facets``), with ``@<checkpoint>`` for a
    checkpoint other than last.ckpt; for the checkpoints of one run, ``row_name``."""
    folders = {ckpt.parents[1] for ckpt, _ in evaluated}
    if len(folders) < 2 or any(ckpt.parent.name != "checkpoints" for ckpt, _ in evaluated):
        return [row_name(ckpt, config) for ckpt, config in evaluated]
    from mmf_lightning.runs.folders import Run, name_facets

    runs = [Run(ckpt.parents[1], config) for ckpt, config in evaluated]
    name_facets(runs)
    names = [run.label + ("" if ckpt.stem == "last" else f"@{ckpt.stem}") for run, (ckpt, _) in zip(runs, evaluated)]
    return names if len(set(names)) == len(names) else [row_name(ckpt, config) for ckpt, config in evaluated]


def row_name(ckpt: Path, config: dict) -> str:
    """``<run name>/version_<n>`` (the logger's name, e.g. ``digits/lambda1``) for a run's
    last.ckpt, with ``@<checkpoint>`` for its other checkpoints."""
    if ckpt.parent.name != "checkpoints":
        return str(ckpt.with_suffix(""))
    run = ckpt.parent.parent
    trainer = config.get("trainer")
    logger = (trainer.get("logger") if isinstance(trainer, dict) else None) or {}
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


def data_notes(records: dict[str, dict]) -> str:
    """What each row was evaluated on, and what was not computed and why."""
    lines = ["### Data", "", "| Model | Evaluated on | FID reference |", "|---|---|---|"]
    for name, record in records.items():
        reference = (record.get("fid_protocol") or {}).get("reference", "–")
        lines.append(f"| {name} | {record['description']} (from {record['from']}) | {reference} |")
    notes = [f"- {name}: trajectory-truth metrics (path_error, end_error, one_step_error_truth) {r['trajectory_truth']}"
             for name, r in records.items() if "trajectory_truth" in r]  # fmt: skip
    return "\n" + "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def log_to_wandb(report: dict, results: dict[str, dict[str, float]], out: Path) -> None:
    """One W&B run (job type "evaluate") with the report's settings and data as its config, every
    checkpoint's metrics in its summary (``<row>/<metric>``) and as a table, and the bar chart."""
    import os

    import wandb

    runs = report["runs"]
    config = {"settings": report["settings"], "quick": report["quick"]}
    config["evaluated"] = {name: {"checkpoint": r["checkpoint"], "data": r["description"]} for name, r in runs.items()}
    project = os.environ.get("WANDB_PROJECT", "mmf-lightning")
    # W&B's files beside the report; absolute, as W&B's service resolves paths in its own working directory
    run = wandb.init(project=project, job_type="evaluate", config=config, dir=str(Path(out).absolute()))
    columns = sorted({key for metrics in results.values() for key in metrics})
    table = wandb.Table(columns=["model", *columns])
    for name, metrics in results.items():
        table.add_data(name, *[metrics.get(c) for c in columns])
        run.summary.update({f"{name}/{k}": v for k, v in metrics.items() if v is not None})
    run.log({"evaluation": table, "evaluation_chart": wandb.Image(str(out / "evaluation.png"))})
    run.finish()
