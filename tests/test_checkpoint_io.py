"""Checkpoints are never half-written: a process killed while it writes one leaves the previous
file whole (AtomicCheckpointIO, which the CLI installs for every run)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmf_lightning.commands.fit import MMFLightningCLI
from mmf_lightning.training.checkpoints import AtomicCheckpointIO, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WRITE_BIG = (
    "import sys, torch\n"
    "from mmf_lightning.training.checkpoints import AtomicCheckpointIO\n"
    "big = {'state_dict': {'w': torch.ones(60_000_000)}, 'global_step': 9}\n"
    "AtomicCheckpointIO().save_checkpoint(big, sys.argv[1])\n"
)


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.arange(5.0)}, "global_step": 3}, target)
    writer = subprocess.Popen([sys.executable, "-c", WRITE_BIG, str(target)])
    deadline = time.monotonic() + 60
    while not list(target.parent.glob(".last.ckpt.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.002)
    assert writer.poll() is None, "the 240 MB write ended before it could be interrupted"
    writer.send_signal(signal.SIGKILL)  # mid-write: no handler, no cleanup
    writer.wait(timeout=30)
    saved = read_checkpoint(target)
    assert saved["global_step"] == 3 and torch.equal(saved["state_dict"]["w"], torch.arange(5.0))


def test_every_cli_run_writes_checkpoints_atomically(tmp_path):
    cli = MMFLightningCLI(
        args=["--config", str(ROOT / "configs/quickstart.yaml"), f"--trainer.default_root_dir={tmp_path}"], run=False
    )
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
