"""``python -m mmf_lightning sweep configs/sweeps/NAME.yaml``: a W&B grid sweep run here, one run after another,
without a W&B server (a cluster without internet, or a first try). Each run's command is the one W&B's agent would
run (the sweep's ``command``, with W&B's own argument formatting), and each run is named by what it changes, with the
labels ``plot``, ``evaluate`` and the notebooks give the same runs."""

import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path

from mmf_lightning.commands import CommandParser


def grid(sweep: dict) -> list[dict]:
    """Every parameter combination of a grid sweep: [{name: value}], in W&B's order (the last parameter fastest)."""
    names, choices = [], []
    for name, spec in sweep["parameters"].items():
        names.append(name)
        choices.append(spec["values"] if "values" in spec else [spec["value"]])
    return [dict(zip(names, combination)) for combination in itertools.product(*choices)]


def agent_command(sweep: dict, params: dict, interpreter: str = sys.executable) -> list[str]:
    """The argv W&B's agent runs for ``params`` (its ``create_sweep_command`` and ``create_sweep_command_args``),
    without ``${env}``."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    variables = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(interpreter=[interpreter], program=[sweep["program"]], env=[])
    argv = []
    for chunk in sweep_utils.create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        argv += variables.get(chunk[2:-1]) or [] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return argv


def run_labels(combinations: list[dict]) -> list[str]:
    """Each run's label: what its parameters change against the other runs' (``runs.name_facets``, as ``plot``
    labels the runs' folders)."""
    from mmf_lightning.runs.folders import Run, name_facets

    runs = [Run(Path(str(i)), _nested(params)) for i, params in enumerate(combinations)]
    name_facets(runs)
    return [run.label for run in runs]


def _nested(params: dict) -> dict:
    """``{"a.b": v}`` -> ``{"a": {"b": v}}``, JSON values (a schedule's class_path and init_args) read."""
    config: dict = {}
    for key, value in params.items():
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = json.loads(value)
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def sweep_main(argv: list[str]) -> list[int]:
    parser = CommandParser(
        prog="python -m mmf_lightning sweep",
        description="Run a grid sweep of configs/sweeps/ here, one run after another, without a W&B server. Run it "
        "from the repository's root (the sweeps' config paths are relative to it).",
    )
    parser.add_argument("sweep", help="a sweep file, e.g. configs/sweeps/toy2d_lambda.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print each run's index, label and command; run none")
    parser.add_argument(
        "--only", help="the runs to do, by index as --dry-run lists them: 0,3 (e.g. --only $SLURM_ARRAY_TASK_ID)"
    )
    parser.epilog = "Arguments after -- are added to every run's command, e.g. -- --trainer.devices=2"
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    import yaml

    path = Path(args.sweep)
    if not path.is_file():
        parser.error(f"sweep file {path} does not exist")
    sweep = yaml.safe_load(path.read_text()) or {}
    if sweep.get("method") != "grid" or "command" not in sweep or "parameters" not in sweep:
        parser.error(f"{path} is not a grid sweep with a command and parameters (method: {sweep.get('method')!r})")
    combinations = grid(sweep)
    labels = run_labels(combinations)
    chosen = list(range(len(combinations)))
    if args.only:
        try:
            chosen = [int(i) for i in args.only.split(",")]
        except ValueError:
            parser.error(f"--only takes run indices like 0,3, got {args.only!r}")
        if bad := [i for i in chosen if not 0 <= i < len(combinations)]:
            parser.error(f"--only {bad}: {path} has runs 0 to {len(combinations) - 1}")
    commands = []
    for i in chosen:
        argv_i = [*agent_command(sweep, combinations[i]), *extra]
        if "WandbLogger" in " ".join(argv_i):  # the W&B run's name: the label (its folder stays its run id)
            argv_i.append(f"--trainer.logger.init_args.name={labels[i]}")
        commands.append((i, argv_i))
    missing = sorted({a for _, c in commands for a in _config_paths(c) if not Path(a).is_file()})
    if missing:
        parser.error(f"{missing[0]} does not exist here: run the sweep from the repository's root")
    codes = []
    for i, command in commands:
        shown = shlex.join(["python", *command[1:]])
        print(f"[{i}] {labels[i]}: {shown}", flush=True)
        if not args.dry_run:
            codes.append(subprocess.run(command).returncode)
    if codes:
        failed = [i for (i, _), code in zip(commands, codes) if code]
        print(f"{len(codes) - len(failed)} of {len(codes)} runs finished" + (f"; failed: {failed}" if failed else ""))
        if failed:
            raise SystemExit(1)
    return codes


def _config_paths(command: list[str]) -> list[str]:
    return [command[i + 1] for i, a in enumerate(command[:-1]) if a == "--config"]
