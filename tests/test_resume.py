"""Runs that survive being stopped, with real signals to real training processes:

- SIGKILL mid-epoch, then ``--ckpt_path <its last periodic checkpoint>``: the resumed run logs the
  same loss and lambda at every step as the run that was never interrupted (CPU: bit for bit);
- SIGTERM (preemption): the run saves ``last.ckpt`` at the step it reached and exits with status
  0; the same command with ``--ckpt_path last`` continues in the same folder, exactly, and its
  ``metrics.csv`` still holds the rows from before the signal.

It is also the determinism check: the runs are separate processes with the same seed and config,
and the resumed steps can only match the uninterrupted ones if everything before them did. The
processes of each phase run side by side (2 cores)."""

import csv
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer

from mmf_lightning.runs import find_runs

ROOT = Path(__file__).resolve().parents[1]
# 1024 points in batches of 256: 4 optimizer steps an epoch; the kills land at step 7, mid-epoch
SMALL = ["--model.net.init_args.width=32", "--model.net.init_args.depth=2", "--data.init_args.num_train=1024",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1",
         "--trainer.max_steps=12", "--lambda_schedule.schedule.init_args.warmup_steps=10"]  # fmt: skip
ENV = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _losses(folder: Path) -> dict[int, tuple[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {int(r["step"]): (r["train/loss"], r["train/lambda"]) for r in rows}  # a step twice: the later row


def _start(args, tmp_path, version, *extra) -> subprocess.Popen:
    command = [sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
               *SMALL, f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.version={version}",
               *args, *extra]  # fmt: skip
    return subprocess.Popen(command, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    return out


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[0][-3000:] if proc.poll() is not None else "no step 7 in 180 s"


def test_killed_and_preempted_runs_resume_exactly(tmp_path):
    periodic = tmp_path / "periodic"  # the SIGKILLed run's checkpoints, every 3 steps
    every3 = ["--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={periodic}",
              "--trainer.callbacks.filename={step}", "--trainer.callbacks.every_n_train_steps=3",
              "--trainer.callbacks.save_top_k=-1"]  # fmt: skip

    def stop_at_7(name, pause):  # the signal lands during the pause (a sleep goes on after a handler ran)
        return ["--trainer.callbacks+=helpers.StepMarker", f"--trainer.callbacks.path={tmp_path / name}",
                "--trainer.callbacks.step=7", f"--trainer.callbacks.pause={pause}"]  # fmt: skip

    whole = _start([], tmp_path, "whole")
    killed = _start([*every3, *stop_at_7("killed", 60)], tmp_path, "killed")
    _wait_for(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)  # no handler runs: the checkpoint at step 6 is all that is left
    killed.wait(timeout=30)
    preempted = _start(stop_at_7("preempted", 2), tmp_path, "preempted")
    interrupted = _start(stop_at_7("interrupted", 2), tmp_path, "interrupted")
    _wait_for(tmp_path / "preempted", preempted)
    preempted.send_signal(signal.SIGTERM)
    _wait_for(tmp_path / "interrupted", interrupted)
    interrupted.send_signal(signal.SIGINT)  # Ctrl-C: saved as SIGTERM is
    out = _finish(preempted)  # status 0: a scheduler may requeue it
    runs = tmp_path / "mmf_curriculum_instantaneous"
    last = runs / "preempted" / "checkpoints" / "last.ckpt"
    assert f"SIGTERM at step 7: saved {last}" in out
    said = _finish(interrupted)
    assert f"Ctrl-C at step 7: saved {runs / 'interrupted' / 'checkpoints' / 'last.ckpt'}; resume with: " in said
    resume = shlex.split(said.split("resume with: ")[1].splitlines()[0])  # the printed command, run as it is
    assert resume[:3] == ["python", "-m", "mmf_lightning"] and resume[-2:] == ["--ckpt_path", "last"]
    from_interrupt = subprocess.Popen([sys.executable, *resume[1:]], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)  # fmt: skip
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 7 and saved["callbacks"]  # with the lambda schedule's and the EMA's states
    assert sorted(p.name for p in periodic.iterdir()) == ["step=3.ckpt", "step=6.ckpt"]

    from_kill = _start([f"--ckpt_path={periodic / 'step=6.ckpt'}"], tmp_path, "resumed")
    from_sigterm = _start(["--ckpt_path=last"], tmp_path, "preempted")  # the same command, the same folder
    for proc in (whole, from_kill, from_sigterm, from_interrupt):
        _finish(proc)

    reference = _losses(runs / "whole")
    assert len({loss for loss, _ in reference.values()}) == 12  # the loss moved: the comparisons mean something
    after_kill = _losses(runs / "resumed")
    assert sorted(after_kill) == list(range(6, 12))
    after_sigterm = _losses(runs / "preempted")
    assert sorted(after_sigterm) == list(range(12))  # one metrics.csv: the rows from before SIGTERM kept
    for step in range(6, 12):
        assert after_kill[step] == reference[step], f"step {step}: resumed {after_kill[step]}, whole {reference[step]}"
    after_interrupt = _losses(runs / "interrupted")
    for step in range(12):
        assert after_sigterm[step] == reference[step], f"step {step}: {after_sigterm[step]}, whole {reference[step]}"
        assert after_interrupt[step] == reference[step], f"step {step}: {after_interrupt[step]}, {reference[step]}"
    (preempted_run,) = [r for r in find_runs(tmp_path) if r.folder.name == "preempted"]
    assert preempted_run.metrics["train/loss"][0] == list(range(12))


def _fit_small(tmp_path, *extra):
    command = [sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL,
               f"--trainer.default_root_dir={tmp_path}", *extra]  # fmt: skip
    return subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=240)


def test_ckpt_path_last_continues_the_newest_run_of_the_config_in_its_folder(tmp_path):
    """`--ckpt_path last` (the README's resume) with no version given: the newest last.ckpt of this config's runs,
    and the run goes on in that folder (no new version_1 trained from scratch); with none, exit 2 naming where
    it looked."""
    nothing = _fit_small(tmp_path, "--ckpt_path", "last")
    assert nothing.returncode == 2
    runs = tmp_path / "mmf_curriculum_instantaneous"
    assert nothing.stderr.strip().splitlines()[-1] == (
        f"error: --ckpt_path last: no last.ckpt at {runs}/*/checkpoints/last.ckpt; train this config first (with "
        "the same --trainer.default_root_dir or logger save_dir and name), or pass a checkpoint's path"
    )
    first = _fit_small(tmp_path, "--trainer.max_steps=6")
    assert first.returncode == 0, first.stderr[-3000:]
    again = _fit_small(tmp_path, "--ckpt_path", "last")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {runs / 'version_0' / 'checkpoints' / 'last.ckpt'}" in again.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"]
    assert sorted(_losses(runs / "version_0")) == list(range(12))


def test_a_checkpoint_of_another_model_is_refused_naming_each_setting(tmp_path):
    """fit / validate with --ckpt_path of a checkpoint whose network or objective differ from the config's stop
    before training, naming each setting and --model.init_from (it used to train the checkpoint's net silently)."""
    assert _fit_small(tmp_path, "--trainer.max_steps=2").returncode == 0
    (ckpt,) = tmp_path.rglob("last.ckpt")
    for command in ("fit", "validate"):
        other = [
            "--model.net.init_args.width=64",
            "--model.objective.init_args.tangent=conditional",
            f"--ckpt_path={ckpt}",
        ]
        proc = _fit_small(tmp_path, *other)
        if command == "validate":
            args = [a if a != "fit" else "validate" for a in proc.args]
            proc = subprocess.run(args, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --ckpt_path {ckpt} is a checkpoint of another model than the config's: ")
        assert "model.net.init_args.width: checkpoint 32, config 64" in last
        assert "model.objective.init_args.tangent: checkpoint 'instantaneous', config 'conditional'" in last
        assert f"--model.init_from={ckpt}" in last
    assert len(list(tmp_path.rglob("last.ckpt"))) == 1


@pytest.mark.slow  # Lightning's own SLURM plugin path (the SIGTERM and SIGKILL resumes above run in every suite)
def test_slurm_requeue_signal_saves_and_the_requeued_job_resumes_by_itself(tmp_path):
    """SLURM's requeue signal (SIGUSR1, `#SBATCH --signal=SIGUSR1@90`) to a real run under SLURM's
    environment variables: Lightning's SLURM plugin saves hpc_ckpt_1.ckpt in default_root_dir and
    asks `scontrol` to requeue the job; the job is then killed, as SLURM does, and the same command
    started again (the requeued job) resumes from that checkpoint by itself and trains on exactly
    as the uninterrupted run. `scontrol` is a script that records its arguments: there is no SLURM
    controller on this machine to requeue anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    job = tmp_path / "job"
    command = [sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"), *SMALL,
               f"--trainer.default_root_dir={job}", "--trainer.logger.init_args.version=4242"]  # fmt: skip
    marker = ["--trainer.callbacks+=helpers.StepMarker", f"--trainer.callbacks.path={tmp_path / 'marker'}",
              "--trainer.callbacks.step=7", "--trainer.callbacks.pause=3"]  # fmt: skip
    whole = _start([], tmp_path, "whole")
    first = subprocess.Popen([*command, *marker], env={**ENV, **slurm}, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(tmp_path / "marker", first)
    first.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not (job / "hpc_ckpt_1.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # SLURM ends the job it requeued
    said = first.communicate(timeout=30)[1]
    assert "SLURM requeue at step 7: Lightning saved hpc_ckpt_*.ckpt in" in said, said[-2000:]
    assert torch.load(job / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 7
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]

    requeued = subprocess.run(command, env={**ENV, **slurm}, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    _finish(whole)
    reference = _losses(tmp_path / "mmf_curriculum_instantaneous" / "whole")
    after = _losses(job / "mmf_curriculum_instantaneous" / "version_4242")  # the job id pins the run folder
    for step in range(7, 12):
        assert after[step] == reference[step], f"step {step}: requeued {after[step]}, whole {reference[step]}"


# -- in one process: where the stop lands within an epoch or an optimizer step ---------------------
class _Recorder(L.Callback):
    """The rows of every micro-batch (their sum), and on request a SIGTERM to this process after micro-batch
    ``sigterm_after`` (counted from 1 over this fit)."""

    def __init__(self, sigterm_after: int | None = None, stop_at_step: int | None = None):
        self.batches, self.seen, self.sigterm_after, self.stop_at_step = [], 0, sigterm_after, stop_at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(round(float(batch["x"].sum()), 6))
        self.seen += 1
        trainer.should_stop = trainer.global_step == self.stop_at_step  # (the learning rate still decays over all)
        if self.seen == self.sigterm_after:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler sets the flag; it stops at a batch end


def _fit(tmp_path, max_steps, *, ckpt_path=None, recorder=None, every=None, num_train=1024, **trainer_kw):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mmf_lightning import MeanFlowModule
    from mmf_lightning.callbacks import LambdaScheduler
    from mmf_lightning.callbacks.preemption import SaveOnPreemption
    from mmf_lightning.data import ToyDataModule
    from mmf_lightning.nets import MLP
    from mmf_lightning.objectives import LinearWarmup, ModularMeanFlow, TimeSampler

    L.seed_everything(0)
    module = MeanFlowModule(MLP(dim=2, width=16, depth=1), ModularMeanFlow("instantaneous", TimeSampler("uniform")))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=every)
    callbacks = [LambdaScheduler(LinearWarmup(4)), checkpoints, SaveOnPreemption(), recorder or _Recorder()]
    trainer = quiet_trainer(tmp_path, max_steps=max_steps, limit_val_batches=0, callbacks=callbacks, **trainer_kw)
    trainer.fit(module, ToyDataModule(num_train=num_train, batch_size=32), ckpt_path=ckpt_path)
    return module, callbacks[-1]


def _same_weights(a, b):
    for (name, p), q in zip(a.net.named_parameters(), b.net.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    "limit, num_train", [(5, 1024), (5 / 32, 1024), (None, 160)], ids=["count", "fraction", "none"]
)
def test_resume_at_an_epoch_end_with_limited_epochs_is_exact(tmp_path, limit, num_train):
    """limit_train_batches (a count, or a fraction of the 32 batches), or 160 rows: an epoch is 5 batches. A run
    resumed from the checkpoint at the end of the first epoch reads the second epoch from its first batch and
    draws the noise the whole run draws."""
    kw = dict(num_train=num_train, limit_train_batches=limit or 1.0)
    whole, seen = _fit(tmp_path / "whole", 8, **kw)
    _fit(tmp_path / "first", 8, every=5, recorder=_Recorder(stop_at_step=5), **kw)
    resumed, seen_after = _fit(tmp_path / "first", 8, ckpt_path=tmp_path / "first/ckpt/last.ckpt", **kw)
    assert seen_after.batches == seen.batches[5:]
    _same_weights(resumed, whole)


@pytest.mark.parametrize("after", [5, 6], ids=["mid-step", "step-boundary"])
def test_sigterm_between_micro_batches_resumes_exactly(tmp_path, after):
    """accumulate_grad_batches=2: a SIGTERM after micro-batch 5 (half of optimizer step 3) finishes that step
    before it saves, so the resumed run neither skips nor repeats a micro-batch; after micro-batch 6 it stops
    at once. Either way the resumed run ends with the weights of the run that was never stopped."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    whole, seen = _fit(tmp_path / "whole", 6, accumulate_grad_batches=2)
    stopped = _Recorder(sigterm_after=after)
    with pytest.raises(SIGTERMException):
        _fit(tmp_path / "stopped", 6, recorder=stopped, accumulate_grad_batches=2)
    assert torch.load(tmp_path / "stopped/ckpt/last.ckpt", weights_only=True)["global_step"] == 3
    resumed, seen_after = _fit(tmp_path / "stopped", 6, ckpt_path=tmp_path / "stopped/ckpt/last.ckpt",
                               accumulate_grad_batches=2)  # fmt: skip
    assert stopped.batches + seen_after.batches == seen.batches
    _same_weights(resumed, whole)
