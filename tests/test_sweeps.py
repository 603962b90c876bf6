"""The W&B sweeps in configs/sweeps/: every command of every grid is built the way W&B's agent
builds it (wandb's own argument formatting) and parses with the CLI; one command of each sweep
runs a few steps on small data, logged to an offline W&B run. Creating a sweep needs the W&B
server, so `wandb sweep` itself is not run here."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import SMALL_UNET, STAND_INS, ParseOnly

from mmf_lightning.commands import main
from mmf_lightning.commands.fit import MMFLightningCLI
from mmf_lightning.commands.sweep import agent_command, grid

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_command_of_every_sweep_parses(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the agent runs from the repository's root: relative config paths
    sweep = _load(path)
    assert sweep["method"] == "grid" and (ROOT / sweep["program"]).is_file()
    assert sweep["command"][:4] == ["${env}", "${interpreter}", "-m", "mmf_lightning"] and "${args}" in sweep["command"]
    combinations = grid(sweep)
    assert len({json.dumps(c, sort_keys=True) for c in combinations}) == len(combinations) > 0
    for params in combinations:
        argv = agent_command(sweep, params)
        assert argv[:3] == [sys.executable, "-m", "mmf_lightning"]
        command, args = argv[3], argv[4:]
        for name, value in params.items():  # one argv element each, as --key=value
            assert f"--{name}={value}" in args
        if command == "fit":
            cfg = ParseOnly(args=["fit", *args]).config.fit
            if "lambda_schedule.schedule" in params:
                expected = json.loads(params["lambda_schedule.schedule"])
                assert cfg.lambda_schedule.schedule.class_path == expected["class_path"]
                for key, value in expected["init_args"].items():
                    assert cfg.lambda_schedule.schedule.init_args[key] == value
            for name, value in params.items():
                if name != "lambda_schedule.schedule":
                    assert cfg[name] == value, name
            assert cfg.trainer.logger.class_path.endswith("WandbLogger")
        else:
            from mmf_lightning.commands.evaluate import build_parser

            parsed, rest = build_parser().parse_known_args(args)
            assert rest == [] and parsed.wandb and parsed.ckpt_path_option == [params["ckpt_path"]]
            assert (ROOT / parsed.data).is_file()


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    cli = MMFLightningCLI(args=[
        "fit", "--config", str(ROOT / "configs/digits/lambda1.yaml"), *SMALL_UNET, "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", f"--trainer.default_root_dir={tmp}", "--trainer.enable_progress_bar=false",
        "--fid.init_args.num_samples=100", f"--fid.init_args.cache_dir={tmp / 'fid'}",
        f"--fid.init_args.feature_extractor.init_args.weights_path={tmp.parent / 'digits.pt'}",  # one for the suite
    ])  # fmt: skip
    return Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_one_command_of_each_sweep_runs_on_small_data(path, tmp_path, monkeypatch, digits_checkpoint,
                                                      torch_home_with_alexnet):  # fmt: skip
    """The first command of each grid, with the stand-in data and net of the configs' tests and
    two steps (no validation), logged to an offline W&B run whose config holds the swept values."""
    from mmf_lightning.runs.wandb_files import read_run

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))  # LPIPS' backbone, untrained
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = _load(path)
    params = grid(sweep)[0]
    argv = agent_command(sweep, params)[3:]
    if argv[0] == "evaluate":  # the OOD pass, on a digits checkpoint and a shifted digits set
        argv = [a for a in argv if not a.startswith(("--ckpt_path=", "--data=", "--fid_num_samples="))]
        argv += [f"--ckpt_path={digits_checkpoint}", "--data=configs/presets/data_shift_digits_gaussian_noise.yaml",
                 "--quick", "--no-lpips", "--fid_num_samples=100", f"--output={tmp_path / 'eval'}"]  # fmt: skip
        main(argv)
        (run_dir,) = (tmp_path / "eval" / "wandb").glob("offline-run-*")  # beside the report
        run = read_run(run_dir, wait=60)
        assert run.config["evaluated"][next(iter(run.config["evaluated"]))]["data"].startswith(
            "ShiftDataModule(kind=digits_gaussian_noise"
        )
        assert any(key.endswith("/fid_1step") for key in run.summary)
        return
    config = argv[argv.index("--config") + 1]
    task = Path(config).parent.name
    small = [*STAND_INS.get(task, []), *(SMALL_UNET if task in STAND_INS else [])]
    if task == "cifar10_low_data":  # the stand-in data has no subset_fraction
        argv = [a for a in argv if not a.startswith("--data.init_args.subset_fraction=")]
    cli = MMFLightningCLI(args=[
        *argv, *small, "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        *([f"--fid.init_args.cache_dir={tmp_path / 'fid'}"] if "fid:" in (ROOT / config).read_text() else []),
    ])  # fmt: skip
    run_id = cli.trainer.logger.version
    cli.trainer.logger.experiment.finish()
    assert cli.trainer.global_step == 2
    (run_dir,) = (tmp_path / "runs" / "wandb").glob(f"offline-run-*-{run_id}")  # beside the run folders
    logged = read_run(run_dir, wait=60).config
    if "model.objective.init_args.tangent" in params:
        assert logged["model"]["objective"]["init_args"]["tangent"] == params["model.objective.init_args.tangent"]
    if "lambda_schedule.schedule" in params:
        expected, schedule = json.loads(params["lambda_schedule.schedule"]), logged["lambda_schedule"]["schedule"]
        assert schedule["class_path"] == expected["class_path"]
        assert {k: schedule["init_args"][k] for k in expected["init_args"]} == expected["init_args"]


def test_a_sweep_runs_here_without_a_server_and_its_runs_carry_one_label_everywhere(tmp_path):
    """`sweep` lists the grid (--dry-run), refuses a run it does not have, and runs the ones asked for (--only, extra
    arguments after --) one after another, as W&B's agent would, offline; each run's W&B name is what it changes,
    and `plot` and `evaluate` label the same runs with the same words."""
    import subprocess

    from mmf_lightning.runs import find_runs
    from mmf_lightning.runs.wandb_files import read_run

    def sweep(*args):
        command = [sys.executable, "-m", "mmf_lightning", "sweep", "configs/sweeps/toy2d_lambda.yaml", *args]
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)

    listed = sweep("--dry-run")
    assert listed.returncode == 0, listed.stderr[-2000:]
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 8 and lines[0].startswith("[0] λ=0 · conditional tangent: python -m mmf_lightning fit ")
    assert lines[7].startswith("[7] curriculum (linear, 500 steps) · instantaneous tangent: ")
    wrong = sweep("--only", "8")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: --only [8]: configs/sweeps/toy2d_lambda.yaml has")
    root = tmp_path / "sweep"
    done = sweep("--only", "0,7", "--", f"--trainer.default_root_dir={root}", "--trainer.max_steps=4",
                 "--trainer.val_check_interval=4", "--trainer.enable_progress_bar=false")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 of 2 runs finished" in done.stdout
    labels = ["λ=0 · conditional tangent", "curriculum (linear, 500 steps) · instantaneous tangent"]
    runs = find_runs(root)
    assert sorted(r.label for r in runs) == sorted(labels)  # what plot and the notebooks call them

    def name_of(folder):  # the run record comes first; W&B may still be writing the rest
        deadline = time.monotonic() + 120
        while not (name := read_run(folder).name) and time.monotonic() < deadline:
            time.sleep(0.5)
        return name

    assert sorted(name_of(r.folder / "wandb") for r in runs) == sorted(labels)  # the W&B run names
    out = tmp_path / "eval"
    main(["evaluate", str(root), "--output", str(out), "--quick", "--num_samples=16", "--distance_samples=32",
          "--timing_repeats=1"])  # fmt: skip
    assert sorted(json.loads((out / "evaluation.json").read_text())["runs"]) == sorted(labels)
