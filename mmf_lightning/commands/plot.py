"""``python -m mmf_lightning plot RUNS``: the paper's figures for a folder of runs, as PNG files."""

from pathlib import Path

from mmf_lightning.commands import CommandParser

# name -> what it shows; drawn by ``runs.figures.FIGURES[name]`` (imported once the arguments parse: `--help` and
# argument errors answer without torch)
FIGURES = {
    "loss-curves": "Fig. 1: training loss and lambda across runs",
    "velocity-fields": "Fig. 2: the learned average velocity field of each run (2-D data)",
    "fid": "Fig. 3: FID (or SW for 2-D data) across data fractions and evaluation sets",
    "diversity": "Fig. 4: LPIPS across seeds, and the loss variance over training",
    "paths": "Fig. 5: sampling paths of each run, and D_path over training",
    "trajectories": "Fig. 6: ODE/control reconstructions against the ground truth",
}


def plot_main(argv: list[str]) -> list[Path]:
    parser = CommandParser(
        prog="python -m mmf_lightning plot",
        description="The paper's figures for a folder of runs (a sweep's output): "
        + "; ".join(f"{name}: {help}" for name, help in FIGURES.items()),
    )
    parser.add_argument("runs", help="a folder of runs, e.g. runs/toy2d (every subfolder with a config.yaml)")
    parser.add_argument("--figure", action="append", choices=[*FIGURES, "all"], help="repeatable; default: all")
    parser.add_argument("--output", help="folder for <figure>.png (default: <runs>/figures)")
    parser.add_argument(
        "--evaluations", action="append", default=[], help="folders with evaluation.json of `evaluate` (fid figure)"
    )
    args = parser.parse_args(argv)
    from mmf_lightning.metrics.weights import WeightsMissing
    from mmf_lightning.runs import find_runs
    from mmf_lightning.runs.figures import FIGURES as DRAWN_BY
    from mmf_lightning.runs.figures import NotApplicable

    names = list(FIGURES) if not args.figure or "all" in args.figure else args.figure
    try:
        runs = find_runs(args.runs)
    except FileNotFoundError as err:
        parser.error(str(err))
    out = Path(args.output) if args.output else Path(args.runs) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{len(runs)} runs under {args.runs}:",
        ", ".join(f"{r.folder.relative_to(args.runs)} ({r.label})" for r in runs),
    )
    written, skipped = [], []
    for name in names:
        function = DRAWN_BY[name]
        try:
            fig = function(runs, [args.runs, *args.evaluations]) if name == "fid" else function(runs)
        except (NotApplicable, WeightsMissing) as err:  # this figure cannot be drawn here: the others still are
            if len(names) == 1:
                raise
            print(f"skipped {name}: {' '.join(str(err).split())}")
            skipped.append(name)
            continue
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")  # legends beside a panel stay in the picture
        print(f"wrote {path}")
        written.append(path)
    return written
