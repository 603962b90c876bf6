"""SIGTERM, sent to a real training process, makes it save its step and exit cleanly; the same
command with ``--ckpt_path last`` continues from that step."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmf_lightning.runs import find_runs

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model.net.init_args.width=32", "--model.net.init_args.depth=2", "--data.init_args.num_train=2048",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1",
         "--trainer.val_check_interval=100000"]  # fmt: skip


def test_sigterm_saves_the_step_and_the_run_resumes_from_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    marker = tmp_path / "marker"
    base = [sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL,
            f"--trainer.default_root_dir={tmp_path}", "--trainer.logger.init_args.version=job"]  # fmt: skip
    proc = subprocess.Popen(
        [*base, "--trainer.max_steps=100000", "--trainer.callbacks+=helpers.StepMarker",
         f"--trainer.callbacks.path={marker}", "--trainer.callbacks.step=5"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[0][-3000:] if proc.poll() is not None else "no step 5 in 180 s"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]  # a clean exit: the scheduler may requeue it
    ckpt = tmp_path / "mmf_curriculum_instantaneous" / "job" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    step = saved["global_step"]
    assert step >= 5 and f"SIGTERM at step {step}: saved {ckpt}" in out
    assert saved["callbacks"]  # the lambda schedule's and the EMA's states travel with it

    resumed = subprocess.run(
        [*base, f"--trainer.max_steps={step + 3}", "--ckpt_path=last", "--trainer.callbacks+=helpers.StepMarker",
         f"--trainer.callbacks.path={marker}", "--trainer.callbacks.step=0"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, last, lam = marker.read_text().split()
    assert (int(first), int(last)) == (step, step + 3)  # three more steps, from where it stopped
    assert float(lam) > saved["mmf_lightning"]["lambda"]  # the curriculum went on from its step
    # one folder, one metrics file: the rows from before the preemption are still there
    (run,) = find_runs(tmp_path)
    assert run.metrics["train/loss"][0] == list(range(step + 3))
