"""Every run owns its folder (resolved config, samples, metrics, checkpoints) whatever the logger;
a checkpoint carries its run config as plain data and is evaluated from nothing else; the
command-line's default_root_dir moves a whole run; a checkpoint whose pickle would run code is
refused everywhere with one line."""

import glob
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mmf_lightning.commands import main
from mmf_lightning.commands.fit import MMFLightningCLI
from mmf_lightning.runs import find_runs

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs/quickstart.yaml"
SHORT = [
    "--trainer.max_steps=8",
    "--trainer.val_check_interval=8",
    "--trainer.log_every_n_steps=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.num_train=1024",
    "--model.net.init_args.width=32",
    "--model.net.init_args.depth=2",
]
EVAL = ["--num_samples", "64", "--steps", "4", "--timing_repeats", "0"]


def _fit(tmp_path, *extra):
    return MMFLightningCLI(args=["fit", "--config", str(QUICKSTART), *SHORT, *extra])


def _evaluate_alone(ckpt: Path, tmp_path: Path, name: str) -> dict:
    """``evaluate`` on a copy of ``ckpt`` in a folder of its own: nothing of its run beside it."""
    alone = tmp_path / f"alone_{name}" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copy(ckpt, alone)
    main(["evaluate", "--ckpt_path", str(alone), "--output", str(alone.parent / "eval"), *EVAL])  # as in `sample`
    (record,) = json.loads((alone.parent / "eval" / "evaluation.json").read_text())["runs"].values()
    return record


def _check_run_folder(folder: Path, lr: float, num_train: int) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["lr"] == lr and config["data"]["init_args"]["num_train"] == num_train
    assert [p.name for p in (folder / "samples").iterdir()] == ["step_8.png"]
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)  # plain data only
    assert ckpt["run_config"] == config


def test_two_wandb_runs_in_one_save_dir_stay_apart(tmp_path, monkeypatch):
    """Two offline W&B runs, one save_dir (as in a sweep): each has its own folder with its own
    config.yaml and samples, its W&B run holds its whole resolved config, its metrics and its
    picture, and each checkpoint alone evaluates with its own run's data."""
    from mmf_lightning.runs.wandb_files import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # W&B's service outlives a run and keeps the working directory it started in (a notebook's
    # earlier run, a sweep agent's): the relative save_dir below must not land there
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    import wandb

    wandb.init(project="t", dir=".").finish()
    monkeypatch.chdir(tmp_path)
    folders = []
    for lr, num_train in ((1e-3, 1024), (2e-3, 512)):
        cli = _fit(tmp_path, "--trainer.logger=WandbLogger", "--trainer.default_root_dir=wbruns",
                   f"--model.lr={lr}", f"--data.init_args.num_train={num_train}")  # fmt: skip
        run_id = cli.trainer.logger.version
        cli.trainer.logger.experiment.finish()
        folder = tmp_path / "wbruns" / "mmf-lightning" / run_id
        assert Path(cli.trainer.checkpoint_callback.last_model_path).resolve() == folder / "checkpoints" / "last.ckpt"
        _check_run_folder(folder, lr, num_train)
        folders.append((folder, run_id, lr, num_train))
    assert not (tmp_path / "wbruns" / "config.yaml").exists() and not (tmp_path / "wbruns" / "samples").exists()

    for folder, run_id, lr, num_train in folders:
        (wandb_dir,) = glob.glob(str(tmp_path / "wbruns" / "wandb" / f"offline-run-*-{run_id}"))
        assert (folder / "wandb").resolve() == Path(wandb_dir).resolve()  # W&B's own files, linked
        run = read_run(wandb_dir, wait=60)
        assert run.config["model"]["lr"] == lr and run.config["data"]["init_args"]["num_train"] == num_train
        assert run.config["lambda_schedule"]["schedule"]["class_path"].endswith("LinearWarmup")
        assert run.config["trainer"]["max_steps"] == 8
        steps_logged = [row["trainer/global_step"] for row in run.history if "train/loss" in row]
        assert steps_logged and all(
            torch.isfinite(torch.tensor(r["train/loss"])) for r in run.history if "train/loss" in r
        )
        assert any("val/sw_1step" in row for row in run.history)
        assert any(f.startswith("media/images/samples") for f in run.files)

        # the figures read the same history back through the run folder's link
        (found,) = [r for r in find_runs(tmp_path / "wbruns") if r.folder == folder]
        assert found.metrics["train/loss"] == (
            steps_logged,
            [float(r["train/loss"]) for r in run.history if "train/loss" in r],
        )
        assert found.facets == {"model.lr": f"lr={lr}", "data.init_args.num_train": f"num_train={num_train}"}

        record = _evaluate_alone(folder / "checkpoints" / "last.ckpt", tmp_path, run_id)
        assert "the run config it carries" in record["from"]
        assert f"num_train={num_train}," in record["description"]


def test_a_tensorboard_run_has_its_folder_scalars_and_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = _fit(
        tmp_path,
        "--trainer.logger=TensorBoardLogger",
        f"--trainer.default_root_dir={tmp_path / 'tb'}",
        "--model.lr=1e-3",
    )
    folder = Path(cli.trainer.logger.log_dir)
    assert folder.parent.parent == tmp_path / "tb"  # <save_dir>/<name>/version_<n>, moved by default_root_dir
    _check_run_folder(folder, 1e-3, 1024)
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"train/loss", "train/lambda", "val/sw_1step"} <= set(events.Tags()["scalars"])
    assert [image.step for image in events.Images("samples")] == [8]
    (run,) = find_runs(tmp_path / "tb")  # the figures read it back
    assert run.metrics["train/loss"][1] == [e.value for e in events.Scalars("train/loss")]


def test_two_csv_runs_stay_apart(tmp_path):
    folders = []
    for lr, num_train in ((1e-3, 1024), (2e-3, 512)):
        cli = _fit(tmp_path, f"--trainer.default_root_dir={tmp_path / 'runs'}", f"--model.lr={lr}",
                   f"--data.init_args.num_train={num_train}")  # fmt: skip
        folder = Path(cli.trainer.log_dir)
        _check_run_folder(folder, lr, num_train)
        assert (folder / "metrics.csv").is_file()
        folders.append(folder)
    assert [f.relative_to(tmp_path).as_posix() for f in folders] == [
        "runs/mmf_curriculum_instantaneous/version_0",
        "runs/mmf_curriculum_instantaneous/version_1",
    ]
    for folder, num_train in zip(folders, (1024, 512)):
        record = _evaluate_alone(folder / "checkpoints" / "last.ckpt", tmp_path, folder.name)
        assert f"num_train={num_train}," in record["description"]


def test_default_root_dir_on_the_command_line_moves_the_whole_run(tmp_path, monkeypatch):
    """The quickstart's logger has a save_dir of its own; --trainer.default_root_dir alone moves
    logs, config, samples and checkpoints (nothing lands at the config's place)."""
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path, "--trainer.default_root_dir=elsewhere")
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    run = "elsewhere/mmf_curriculum_instantaneous/version_0"
    assert files == [
        f"{run}/checkpoints/last.ckpt",
        f"{run}/config.yaml",
        f"{run}/hparams.yaml",
        f"{run}/metrics.csv",
        f"{run}/samples/step_8.png",
    ]
    # the logger's own save_dir, given on the command line too, still wins for the logs
    _fit(tmp_path, "--trainer.default_root_dir=elsewhere", "--trainer.logger.init_args.save_dir=logs_here")
    assert (tmp_path / "logs_here" / "mmf_curriculum_instantaneous" / "version_0" / "config.yaml").is_file()


class _RunsCode:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def quickstart_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cli = _fit(tmp, f"--trainer.default_root_dir={tmp}")
    return Path(cli.trainer.checkpoint_callback.last_model_path)


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_everywhere(quickstart_checkpoint, tmp_path, capsys):
    from mmf_lightning import MeanFlowModule
    from mmf_lightning.training.checkpoints import CheckpointError

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    checkpoint = torch.load(quickstart_checkpoint, weights_only=True)
    torch.save({**checkpoint, "payload": _RunsCode(marker)}, evil)
    expected = f"error: {evil} cannot be read as a checkpoint: its pickle holds objects other than tensors"
    # argparse's commands (sample, evaluate) print usage, then `<prog>: error: ...`

    commands = [
        ["sample", "--ckpt_path", str(evil), "--output", str(tmp_path / "s.npz")],
        ["evaluate", str(evil), "--output", str(tmp_path / "e")],
        ["fit", "--config", str(QUICKSTART), "--ckpt_path", str(evil), *SHORT],
        ["validate", "--config", str(QUICKSTART), "--ckpt_path", str(evil)],
    ]
    for command in commands:
        with pytest.raises(SystemExit) as info:
            main(command)
        err = capsys.readouterr().err
        assert info.value.code == 2, command
        assert expected in err.rstrip().splitlines()[-1], (command, err[-2000:])
    with pytest.raises(CheckpointError, match="could run code"):
        MeanFlowModule.load_from_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "text", "missing"])
def test_a_broken_checkpoint_is_named_in_one_line(quickstart_checkpoint, tmp_path, capsys, damage):
    bad = tmp_path / "bad.ckpt"
    if damage == "truncated":
        bad.write_bytes(quickstart_checkpoint.read_bytes()[:2000])
    elif damage == "text":
        bad.write_text("not a checkpoint\n")
    for command in (["sample", "--ckpt_path", str(bad), "--output", str(tmp_path / "s.npz")],
                    ["validate", "--config", str(QUICKSTART), "--ckpt_path", str(bad)],
                    ["fit", "--config", str(QUICKSTART), "--ckpt_path", str(bad)],
                    ["evaluate", str(bad), "--output", str(tmp_path / "eval")]):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            main(command)
        last = capsys.readouterr().err.rstrip().splitlines()[-1]
        assert info.value.code == 2
        assert str(bad) in last and ("does not exist" if damage == "missing" else "cannot be read") in last, last


def test_traceback_switch_shows_the_traceback(tmp_path, monkeypatch):
    from mmf_lightning.training.checkpoints import CheckpointError

    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint\n")
    monkeypatch.setenv("MMF_LIGHTNING_TRACEBACK", "1")
    with pytest.raises(CheckpointError, match="cannot be read"):
        main(["sample", "--ckpt_path", str(bad), "--output", str(tmp_path / "s.npz")])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
