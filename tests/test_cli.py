"""The command line: every config in configs/ parses and trains a few steps; bad input is named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmf_lightning.cli import MMFLightningCLI, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "presets" not in p.parts)
SMALL_UNET = [
    "--model.net.init_args.channels=16",
    "--model.net.init_args.channel_mult=[1,2]",
    "--model.net.init_args.num_res_blocks=1",
    "--model.net.init_args.groups=8",
]


def _quiet(tmp_path, steps=2):
    return [
        f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def _fit(config, tmp_path, *extra, steps=2):
    args = ["fit", "--config", str(config), *_quiet(tmp_path, steps), *extra]
    text = Path(config).read_text()
    if "fid:" in text:  # reference statistics (and the digits classifier) stay in pytest's folders
        args.append(f"--fid.init_args.cache_dir={tmp_path / 'fid'}")
    if "fid_digits" in text:
        args.append(f"--fid.init_args.feature_extractor.init_args.weights_path={tmp_path.parent / 'digits.pt'}")
    return MMFLightningCLI(args=args)


def test_there_is_a_config_per_table_2_row():
    names = {p.stem for p in CONFIGS}
    assert {
        "quickstart",
        "meanflow_full",
        "meanflow_stopgrad",
        "mmf_lambda0",
        "mmf_lambda05",
        "mmf_lambda1",
        "mmf_curriculum",
        "mmf_curriculum_instantaneous",
        "flow_matching",
        "consistency",
    } <= names


# datasets that cannot be on this machine, and the small data of the same shape that stands in;
# their FID keeps its path (reference statistics at setup) with a small extractor, not Inception
SMALL_FID = ["--fid.init_args.feature_extractor=helpers.TinyExtractor", "--fid.init_args.num_samples=16"]
STAND_INS = {
    "cifar10": ["--data=helpers.SmallImages", "--data.init_args.batch_size=8", *SMALL_FID],
    "cifar10_low_data": ["--data=helpers.SmallImages", "--data.init_args.batch_size=8", *SMALL_FID],
    "imagenet64": [
        "--data=helpers.SmallImages",
        "--data.init_args.batch_size=4",
        "--data.init_args.image_size=64",
        "--data.init_args.num_classes=1000",
        *SMALL_FID,
    ],
}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_trains_a_few_steps(config, tmp_path, monkeypatch, torch_home_with_alexnet):
    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))  # LPIPS' backbone, untrained
    extra = list(STAND_INS.get(config.parent.name, []))
    if "unet_" in config.read_text():
        extra += SMALL_UNET
    cli = _fit(config, tmp_path, *extra)
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.logged_metrics["train/loss"])


def test_quickstart_leaves_a_checkpoint_and_a_picture(tmp_path):
    cli = _fit(ROOT / "configs/quickstart.yaml", tmp_path, "--trainer.val_check_interval=10", steps=10)
    log_dir = Path(cli.trainer.log_dir)
    assert (log_dir / "samples" / "step_10.png").stat().st_size > 10_000
    assert Path(cli.trainer.checkpoint_callback.last_model_path).is_file()


def test_sample_command_writes_npz_and_png(tmp_path):
    cli = _fit(ROOT / "configs/quickstart.yaml", tmp_path, "--trainer.val_check_interval=4", steps=4)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    out = tmp_path / "s" / "samples.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmf_lightning",
            "sample",
            "--ckpt_path",
            ckpt,
            "--num_samples",
            "300",
            "--steps",
            "2",
            "--output",
            str(out),
            "--batch_size",
            "128",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = np.load(out)["samples"]
    assert samples.shape == (300, 2) and np.isfinite(samples).all()
    assert out.with_suffix(".png").is_file()


def test_sample_command_names_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--output", str(tmp_path / "o.npz")])
    assert "nope.ckpt does not exist" in capsys.readouterr().err


# -- bad input, before training starts -------------------------------------------------------------
def test_unknown_config_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs/quickstart.yaml").read_text().replace("  lr_decay: cosine", "  lr_decai: cosine"))
    with pytest.raises(SystemExit):
        MMFLightningCLI(args=["fit", "--config", str(bad)])
    assert "lr_decai" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, match",
    [
        ("--lambda_schedule.schedule.init_args.warmup_steps=-5", "warmup_steps must be >= 0, got -5"),
        ("--lambda_schedule.schedule.init_args.end=1.5", r"LinearWarmup end must be in \[0, 1\], got 1.5"),
        ("--model.net.init_args.dim=3", r"network expects data of shape \(3,\) but the datamodule"),
    ],
)
def test_bad_values_are_named(tmp_path, capsys, override, match):
    with pytest.raises((ValueError, SystemExit)) as info:
        _fit(ROOT / "configs/quickstart.yaml", tmp_path, override)
    import re

    assert re.search(match, str(info.value) + capsys.readouterr().err)


def test_missing_cifar10_is_named_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found: expected .*cifar-10-batches-py.*download=true"):
        _fit(ROOT / "configs/cifar10/mmf_curriculum.yaml", tmp_path, f"--data.init_args.root={tmp_path}", *SMALL_UNET)


# -- DDP over gloo: JVP inside DistributedDataParallel ------------------------------------------
def test_ddp_two_ranks_lambda_one_gradients_agree(tmp_path):
    """torch.func.jvp cannot run on the DDP wrapper; the objective calls the inner network.
    With lambda = 1 every parameter must get a gradient, all-reduced to the same value on both ranks."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [
        sys.executable,
        "-m",
        "mmf_lightning",
        "fit",
        "--config",
        str(ROOT / "configs/quickstart.yaml"),
        *_quiet(tmp_path, steps=1),
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--lambda_schedule.schedule=mmf_lightning.objectives.Constant",
        "--lambda_schedule.schedule.init_args.value=1.0",
        "--model.objective.init_args.tangent=conditional",
        "--trainer.callbacks+=helpers.GradientRecorder",
        f"--trainer.callbacks.out_dir={tmp_path / 'grads'}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / "grads" / f"rank{i}.pt") for i in (0, 1)]
    for rank in ranks:
        assert rank["missing"] == [] and rank["lam"] == 1.0
    assert ranks[0]["grads"].keys() == ranks[1]["grads"].keys()
    for name, g0 in ranks[0]["grads"].items():
        torch.testing.assert_close(ranks[1]["grads"][name], g0, msg=name)
    assert sum(g.norm() for g in ranks[0]["grads"].values()) > 0


def test_ddp_fid_equals_single_process_fid(tmp_path):
    """The same checkpoint validated on one process and on two DDP ranks gives the same FID:
    samples are block-seeded and split across ranks, the reference statistics are summed
    across ranks (each run computes its own: separate caches), and nothing hangs."""
    config = ROOT / "configs/digits/lambda1.yaml"
    small = [*SMALL_UNET, "--fid.init_args.num_samples=300", "--fid.init_args.batch_size=64"]
    cli = _fit(config, tmp_path, *small, "--trainer.val_check_interval=2", steps=2)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    weights = f"--fid.init_args.feature_extractor.init_args.weights_path={tmp_path.parent / 'digits.pt'}"
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    values = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        cmd = [
            sys.executable, "-m", "mmf_lightning", "validate", "--config", str(config), "--ckpt_path", ckpt,
            *_quiet(out)[1:], *small, weights, f"--fid.init_args.cache_dir={out / 'fid'}",
            "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
            *(["--trainer.strategy=ddp"] if devices > 1 else []),
            "--trainer.callbacks+=helpers.MetricsRecorder", f"--trainer.callbacks.out_dir={out / 'metrics'}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ranks = [json.loads((out / "metrics" / f"rank{r}.json").read_text()) for r in range(devices)]
        values[devices] = [{k: m[k] for k in ("val/fid_1step", "val/fid_2step")} for m in ranks]
    one, (r0, r1) = values[1][0], values[2]
    assert r0 == r1  # every rank computes the same value
    for key in one:
        assert one[key] > 0
        assert r0[key] == pytest.approx(one[key], rel=1e-6), key


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_validate_test_predict_from_a_checkpoint(command, tmp_path):
    cli = _fit(ROOT / "configs/quickstart.yaml", tmp_path, "--trainer.val_check_interval=2", steps=2)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    run = MMFLightningCLI(
        args=[
            command,
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--ckpt_path",
            ckpt,
            *_quiet(tmp_path)[1:],
            "--trainer.limit_predict_batches=2",
        ]
    )
    if command == "predict":
        preds = run.trainer.predict_loop.predictions
        assert len(preds) == 2 and preds[0].shape == (256, 2)
    else:
        assert f"{'val' if command == 'validate' else 'test'}/loss" in run.trainer.callback_metrics
