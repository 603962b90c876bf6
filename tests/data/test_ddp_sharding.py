"""Under DDP (2 CPU ranks, gloo) each rank reads its own shard and draws its own noise."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_each_rank_its_own_shard_and_randomness(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [
        sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        "--trainer.max_steps=4", "--trainer.strategy=ddp", "--trainer.devices=2",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.val_check_interval=4",
        "--data.init_args.num_train=512", "--data.init_args.batch_size=128",  # global: 64 a rank
        "--trainer.callbacks+=helpers.ShardRecorder", f"--trainer.callbacks.out_dir={tmp_path / 'shards'}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    rank1 = "\n".join(line for line in proc.stderr.splitlines() if "[rank1]" in line)
    assert proc.returncode == 0, rank1[-3000:] + proc.stderr[-2000:]  # a crash of rank 1 shows as rank 0's lost peer
    r0, r1 = (torch.load(tmp_path / "shards" / f"rank{i}.pt") for i in (0, 1))
    rows0, rows1 = ({tuple(r.tolist()) for r in rank["rows"]} for rank in (r0, r1))
    assert len(rows0) == len(rows1) == 256 and not rows0 & rows1  # 4 steps of 128 = one epoch, in two disjoint halves
    from mmf_lightning.data import ToyDataModule

    dm = ToyDataModule(num_train=512)
    dm.setup()
    assert rows0 | rows1 == {tuple(r.tolist()) for r in dm.train_set.tensors["x"]}
    assert not torch.equal(r0["draws"], r1["draws"])  # the ranks' generators differ
    # rank 1 draws from its own stream (seed_everything's 0 mixed with the rank), not from rank 0's of seed 1
    from mmf_lightning.training.rng_state import rank_seed

    own = torch.rand(4, generator=torch.Generator().manual_seed(rank_seed(0, 1)))
    assert torch.equal(r1["draws"][0], own) and not torch.equal(
        own, torch.rand(4, generator=torch.Generator().manual_seed(1))
    )


def test_no_two_seed_and_rank_pairs_share_a_stream():
    from mmf_lightning.training.rng_state import rank_seed

    seeds = [rank_seed(s, r) for s in range(500) for r in range(16)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert [rank_seed(s, 0) for s in range(500)] == list(range(500))  # one device: rank 0's streams
