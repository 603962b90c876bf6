"""Exact resume: a run killed with SIGKILL mid-epoch and resumed from its last checkpoint logs the
same loss and lambda, step by step, as the run that was never interrupted (CPU: bit for bit).

It is also the determinism check: the killed run and the uninterrupted one are separate processes
with the same seed and config, and the resumed steps can only match if their first six did."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# 1024 points in batches of 256: 4 optimizer steps an epoch, so the checkpoint at step 6 is mid-epoch
SMALL = ["--model.net.init_args.width=32", "--model.net.init_args.depth=2", "--data.init_args.num_train=1024",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1",
         "--trainer.max_steps=12"]  # fmt: skip


def _losses(folder: Path) -> dict[int, tuple[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {int(r["step"]): (r["train/loss"], r["train/lambda"]) for r in rows}


def test_a_run_killed_mid_epoch_resumes_exactly(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    ckpts = tmp_path / "ckpts"
    base = [sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL,
            f"--trainer.default_root_dir={tmp_path}", "--lambda_schedule.schedule.init_args.warmup_steps=10",
            "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={ckpts}",
            "--trainer.callbacks.filename={step}", "--trainer.callbacks.every_n_train_steps=3",
            "--trainer.callbacks.save_top_k=-1"]  # fmt: skip
    run = dict(env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    whole = subprocess.Popen(  # the uninterrupted run, beside the one to kill (2 cores)
        [*base, f"--trainer.callbacks.dirpath={tmp_path / 'whole'}", "--trainer.logger.init_args.version=whole"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    marker = tmp_path / "marker"
    killed = subprocess.Popen(
        [*base, "--trainer.callbacks+=helpers.StepMarker", f"--trainer.callbacks.path={marker}",
         "--trainer.callbacks.step=7", "--trainer.callbacks.pause=60"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the run to kill never reached step 7"
    killed.send_signal(signal.SIGKILL)  # no handler runs: the checkpoint at step 6 is all that is left
    killed.wait(timeout=30)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step=3.ckpt", "step=6.ckpt"]

    resumed = subprocess.run(
        [*base, f"--ckpt_path={ckpts / 'step=6.ckpt'}", "--trainer.logger.init_args.version=resumed"], **run
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert whole.wait(timeout=240) == 0, whole.stderr.read()[-3000:]
    runs = tmp_path / "mmf_curriculum_instantaneous"
    reference, after = _losses(runs / "whole"), _losses(runs / "resumed")
    assert sorted(after) == list(range(6, 12))  # the resumed run logged steps 6 to 11
    for step in range(6, 12):
        assert after[step] == reference[step], f"step {step}: resumed {after[step]}, uninterrupted {reference[step]}"
    assert len({loss for loss, _ in reference.values()}) == 12  # the loss moved: the comparison means something
