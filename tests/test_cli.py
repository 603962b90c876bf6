"""The command line: every config in configs/ parses and trains a few steps; bad input is named."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_UNET, STAND_INS, ParseOnly

from mmf_lightning.commands import main
from mmf_lightning.commands.fit import MMFLightningCLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not {"presets", "sweeps"} & set(p.parts))


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


# configs whose net, data and objective class another config of the same task trains here, with other lambda or
# tangent values (each value is trained on some task): trained by `make test-all`, parsed on every run of the suite
SAME_NET_OTHER_LAMBDA = {
    "imagenet64/lambda0.yaml",
    "imagenet64/lambda1.yaml",
    "imagenet64/curriculum_instantaneous.yaml",
    "cifar10/mmf_lambda0.yaml",
    "cifar10/mmf_lambda05.yaml",
    "cifar10/meanflow_stopgrad.yaml",
    "cifar10_low_data/lambda0.yaml",
    "cifar10_low_data/lambda1.yaml",
    "cifar10_low_data/curriculum_instantaneous.yaml",
    "digits/lambda0.yaml",
    "digits/lambda1.yaml",
    "digits/curriculum_instantaneous.yaml",
    "recipes/warm_start_checkerboard.yaml",  # the quickstart plus flow_matching_steps (tests/test_warm_start.py)
    "recipes/imf_moons.yaml",  # trained for the notebooks (tests/paper_runs.py, conditional_runs)
}


# configs for data or weights that cannot be on this machine and have no stand-in here (Stable Diffusion's VAE):
# parsed on every run of the suite, never trained
NOT_ON_THIS_MACHINE = {"latent/imagenet256_dit_b2.yaml"}


def _config_id(path: Path) -> str:
    return str(path.relative_to(ROOT / "configs"))


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(p, marks=pytest.mark.slow) if _config_id(p) in SAME_NET_OTHER_LAMBDA else p
        for p in CONFIGS
        if _config_id(p) not in NOT_ON_THIS_MACHINE
    ],
    ids=_config_id,
)
def test_every_config_trains_a_few_steps(config, tmp_path, monkeypatch, torch_home_with_alexnet):
    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))  # LPIPS' backbone, untrained
    extra = list(STAND_INS.get(config.parent.name, []))
    if "unet_" in config.read_text():
        extra += SMALL_UNET
    if "LatentDataModule" in config.read_text():
        extra += [f"--data.init_args.cache_dir={tmp_path / 'latents'}"]  # not under the working directory
    cli = _fit(config, tmp_path, *extra)
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.logged_metrics["train/loss"])
    if "LatentDataModule" in config.read_text():  # `sample` decodes a latent run's samples into images
        out = tmp_path / "samples.npz"
        main(["sample", "--ckpt_path", cli.trainer.checkpoint_callback.last_model_path, "--output", str(out),
              "--num_samples", "5"])  # fmt: skip
        assert np.load(out)["samples"].shape == (5, *cli.datamodule.images.data_shape)


@pytest.mark.parametrize("config", sorted(SAME_NET_OTHER_LAMBDA | NOT_ON_THIS_MACHINE))
def test_configs_trained_only_in_test_all_parse(config):
    path = ROOT / "configs" / config
    small = [*STAND_INS.get(path.parent.name, []), *(SMALL_UNET if "unet_" in path.read_text() else [])]
    cfg = ParseOnly(args=["fit", "--config", str(path), *small]).config
    assert cfg.fit.lambda_schedule.schedule.class_path.startswith("mmf_lightning.objectives.")


def test_quickstart_leaves_a_checkpoint_and_a_picture(tmp_path):
    cli = _fit(ROOT / "configs/quickstart.yaml", tmp_path, "--trainer.val_check_interval=10", steps=10)
    log_dir = Path(cli.trainer.log_dir)
    assert (log_dir / "samples" / "step_10.png").stat().st_size > 10_000
    assert Path(cli.trainer.checkpoint_callback.last_model_path).is_file()


def test_sample_command_writes_npz_and_png(tmp_path, capsys):
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
    with pytest.raises(SystemExit):  # the quickstart's net has no classes to guide
        main(["sample", "--ckpt_path", ckpt, "--output", str(out), "--guidance_scale", "3"])
    assert "--guidance_scale 3.0: the network of" in capsys.readouterr().err


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
        (
            "--lambda_schedule.schedule.init_args.warmup_steps=-5",
            "warmup_steps must be a whole number of steps in .0, 1e.12., got -5",
        ),
        ("--lambda_schedule.schedule.init_args.end=1.5", r"LinearWarmup end must be in \[0, 1\], got 1.5"),
        ("--model.net.init_args.dim=3", r"network expects data of shape \(3,\) but the datamodule"),
    ],
)
def test_bad_values_are_named(tmp_path, capsys, override, match):
    with pytest.raises((ValueError, SystemExit)) as info:
        _fit(ROOT / "configs/quickstart.yaml", tmp_path, override)
    import re

    assert re.search(match, str(info.value) + capsys.readouterr().err)


def test_missing_lpips_weights_stop_fit_before_training(tmp_path, monkeypatch):
    """The CIFAR-10 configs validate LPIPS along the path: without AlexNet's weights (and no
    downloads) fit stops at setup, naming the file and both fixes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(FileNotFoundError, match=r"alexnet-owt-7be5be79.pth are missing.*download-weights.*TORCH_HOME"):
        _fit(ROOT / "configs/cifar10/mmf_curriculum.yaml", tmp_path, *STAND_INS["cifar10"], *SMALL_UNET)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_missing_cifar10_is_named_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found: expected .*cifar-10-batches-py.*download=true"):
        _fit(ROOT / "configs/cifar10/mmf_curriculum.yaml", tmp_path, f"--data.init_args.root={tmp_path}", *SMALL_UNET)


# -- DDP over gloo: JVP inside DistributedDataParallel ------------------------------------------
GRADIENT_RUN = [
    "--lambda_schedule.schedule=mmf_lightning.objectives.Constant",
    "--lambda_schedule.schedule.init_args.value=1.0",
    "--model.objective.init_args.tangent=conditional",
    "--trainer.callbacks+=helpers.GradientRecorder",
    "--trainer.callbacks.out_dir={grads}",
    "--trainer.callbacks+=helpers.FirstStepRecorder",
    "--trainer.callbacks.out_dir={grads}",
]


def _check_gradients_of_two_ranks(grads: Path) -> None:
    """Every parameter got a gradient, all-reduced to the same value on both ranks, and that value is
    the gradient of the mean loss over the combined batch of both ranks, replayed here in one process
    from each rank's batch and random state (not only 1 rank against 2)."""
    ranks = [torch.load(grads / f"rank{i}.pt") for i in (0, 1)]
    for rank in ranks:
        assert rank["missing"] == [] and rank["lam"] == 1.0
    assert ranks[0]["grads"].keys() == ranks[1]["grads"].keys()
    for name, g0 in ranks[0]["grads"].items():
        torch.testing.assert_close(ranks[1]["grads"][name], g0, msg=name)
    assert sum(g.norm() for g in ranks[0]["grads"].values()) > 0

    from mmf_lightning import MeanFlowModule
    from mmf_lightning.nets import MLP
    from mmf_lightning.objectives import ModularMeanFlow, TimeSampler

    starts = [torch.load(grads / f"start_rank{i}.pt") for i in (0, 1)]
    assert starts[0]["batch"]["x"].shape == (128, 2)  # the global batch of 256, split over 2 ranks
    assert not torch.equal(starts[0]["batch"]["x"], starts[1]["batch"]["x"])  # each rank its own shard
    objective = ModularMeanFlow(tangent="conditional", time_sampler=TimeSampler("uniform", equal_fraction=0.25))
    module = MeanFlowModule(MLP(dim=2, width=256, depth=4), objective)
    module.net.load_state_dict(starts[0]["net"])
    module.lam = 1.0
    losses = []
    for start in starts:
        torch.set_rng_state(start["rng"])
        losses.append(module._loss(start["batch"])[1].loss)
    (sum(losses) / 2).backward()
    for name, p in module.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_two_ranks_lambda_one_gradients_agree(tmp_path):
    """torch.func.jvp cannot run on the DDP wrapper; the objective calls the inner network.
    With lambda = 1 on 2 ranks of one machine, the gradients are those of the combined batch."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [
        sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        *_quiet(tmp_path, steps=1), "--trainer.strategy=ddp", "--trainer.devices=2",
        *(a.format(grads=tmp_path / "grads") for a in GRADIENT_RUN),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_gradients_of_two_ranks(tmp_path / "grads")


def test_fsdp2_two_ranks_lambda_one_gradients_agree(tmp_path):
    """model.shard under ModelParallelStrategy (FSDP2 over gloo): the JVP runs through the sharded forward (the
    MLP's explicit JVP would bypass the hooks that gather its weights), and the gradients, gathered whole, are
    those of the combined batch, as under DDP."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [
        sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        *_quiet(tmp_path, steps=1), "--trainer.devices=2", "--trainer.callbacks=[]",
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1",
        "--trainer.strategy.save_distributed_checkpoint=false", "--trainer.num_sanity_val_steps=0",
        "--model.shard=true", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true", *(a.format(grads=tmp_path / "grads") for a in GRADIENT_RUN),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sharded the network over 2 data-parallel ranks (FSDP2)" in proc.stdout + proc.stderr
    _check_gradients_of_two_ranks(tmp_path / "grads")
    from mmf_lightning import MeanFlowModule  # the sharded run's checkpoint is one file that loads unsharded

    (ckpt,) = tmp_path.rglob("last.ckpt")
    module = MeanFlowModule.load_from_checkpoint(ckpt)
    assert module.hparams.shard and type(module.net).__name__ == "MLP"
    assert module.sample(8, 1).shape == (8, 2)


def test_fsdp2_ranks_whose_rows_take_different_branches_do_not_hang(tmp_path):
    """FSDP2 gathers a sharded DiT block's weights in every call of the network, a collective: rank 0 draws only
    rows r < t (the tangent's forward and the JVP) and rank 1 only rows r = t (one forward), and both still call the
    network alike, so the step finishes (it hung until the collective timed out) with the same all-reduced
    gradient on both ranks."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    dit = {"in_channels": 1, "image_size": 8, "patch_size": 2, "width": 32, "depth": 2, "heads": 2}
    cmd = [
        sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/digits/quick.yaml"),
        *_quiet(tmp_path, steps=1), "--trainer.devices=2", "--trainer.callbacks=[]", "--fid=null",
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1",
        "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0", "--model.shard=true",
        "--model.net=mmf_lightning.nets.DiT", *(f"--model.net.init_args.{k}={v}" for k, v in dit.items()),
        "--model.objective.init_args.time_sampler=helpers.RankSkewedTimes",
        "--lambda_schedule.schedule=mmf_lightning.objectives.Constant", "--lambda_schedule.schedule.init_args.value=1",
        "--trainer.callbacks+=helpers.GradientRecorder", f"--trainer.callbacks.out_dir={tmp_path / 'grads'}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks too
        pytest.fail("the sharded step hung: the ranks called the network a different number of times")
    assert proc.returncode == 0, out[-3000:]
    ranks = [torch.load(tmp_path / "grads" / f"rank{i}.pt") for i in (0, 1)]
    for name, g0 in ranks[0]["grads"].items():
        torch.testing.assert_close(ranks[1]["grads"][name], g0, msg=name)
        assert torch.isfinite(g0).all(), name


def test_two_nodes_of_one_process_each_under_torchrun(tmp_path):
    """A 2-node x 1-process job, as on a cluster: two torchrun launchers (node ranks 0 and 1) on
    localhost over gloo, Lightning's num_nodes=2; the gradients equal the 1-process replay."""
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    fit = [
        "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"), *_quiet(tmp_path, steps=1),
        "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=2",
        *(a.format(grads=tmp_path / "grads") for a in GRADIENT_RUN),
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                *fit,
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    _check_gradients_of_two_ranks(tmp_path / "grads")


def test_ddp_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    """A NaN in rank 1's batch from step 1 on: both ranks skip the same steps, and after more than
    max_skipped_in_a_row of them every rank stops with the error itself (the decision is collective).
    A rank that stopped alone would leave the other waiting in the next all-reduce: over gloo it
    fails when the peer's socket closes, over NCCL it waits until the collective's timeout."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [
        sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        *_quiet(tmp_path, steps=8), "--trainer.strategy=ddp", "--trainer.devices=2", "--model.max_skipped_in_a_row=2",
        "--trainer.callbacks+=helpers.NaNInjector", "--trainer.callbacks.rank=1", "--trainer.callbacks.step=1",
        "--trainer.callbacks.until=100",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode != 0
    for rank in (0, 1):
        pattern = rf"\[rank{rank}\]: FloatingPointError: training diverged: 3 optimizer step\(s\) in a row.*by step 4"
        assert re.search(pattern, proc.stderr), proc.stderr[-3000:]


DIGITS = ROOT / "configs/digits/lambda1.yaml"
DIGITS_SMALL = [*SMALL_UNET, "--fid.init_args.num_samples=300", "--fid.init_args.batch_size=64"]
TESTS_ON_PATH = {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """A digits run (lambda = 1, small UNet) two steps in: its last.ckpt, beside its config.yaml."""
    cli = _fit(DIGITS, tmp_path_factory.mktemp("digits_run"), *DIGITS_SMALL, "--trainer.val_check_interval=2")
    return Path(cli.trainer.checkpoint_callback.last_model_path)


def _run(args, cwd, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "mmf_lightning", *args],
        env=dict(os.environ, **TESTS_ON_PATH), capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_ddp_validation_metrics_equal_single_process(digits_checkpoint, tmp_path):
    """The same checkpoint validated on one process and on two DDP ranks gives the same FID and
    path metrics: samples are block-seeded and split across ranks, the reference statistics are
    summed across ranks (each run computes its own: separate caches), and nothing hangs."""
    weights = f"--fid.init_args.feature_extractor.init_args.weights_path={tmp_path.parent / 'digits.pt'}"
    values = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        _run([
            "validate", "--config", str(DIGITS), "--ckpt_path", str(digits_checkpoint), *_quiet(out)[1:],
            *DIGITS_SMALL, weights, f"--fid.init_args.cache_dir={out / 'fid'}",
            "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
            *(["--trainer.strategy=ddp"] if devices > 1 else []),
            "--trainer.callbacks+=helpers.MetricsRecorder", f"--trainer.callbacks.out_dir={out / 'metrics'}",
        ], cwd=tmp_path)  # fmt: skip
        ranks = [json.loads((out / "metrics" / f"rank{r}.json").read_text()) for r in range(devices)]
        # val/loss is a mean over each rank's shard of the validation set, padded by the sampler
        values[devices] = [{k: v for k, v in m.items() if k.startswith("val/") and k != "val/loss"} for m in ranks]
    one, (r0, r1) = values[1][0], values[2]
    assert {"val/fid_1step", "val/fid_2step", "val/one_step_error", "val/d_path", "val/smoothness"} <= set(one)
    assert r0 == r1  # every rank computes the same value
    assert r0.keys() == one.keys()
    for key in one:
        assert one[key] > 0, key
        assert r0[key] == pytest.approx(one[key], rel=1e-6), key


def test_evaluate_on_two_processes_equals_one(digits_checkpoint, tmp_path, monkeypatch, torch_home_with_alexnet):
    """`evaluate --devices 2` (Fabric, DDP over gloo) writes the numbers of `--devices 1`: FID in
    the digits classifier's features, LPIPS along the path and across seeds, the path metrics."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))
    reports = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        _run([
            "evaluate", str(digits_checkpoint), "--lpips", "--output", str(out), "--num_samples", "120", "--steps", "4",
            "--batch_size", "32", "--fid_num_samples", "200", "--timing_repeats", "3",
            "--accelerator", "cpu", "--devices", str(devices),
        ], cwd=tmp_path)  # fmt: skip
        (run,) = json.loads((out / "evaluation.json").read_text())["runs"].values()
        reports[devices] = run["metrics"]
    one, two = reports[1], reports[2]
    expected = {"fid_1step", "fid_2step", "one_step_error", "d_path", "smoothness", "lpips_path", "lpips_diversity"}
    assert expected <= set(one) and one.keys() == two.keys()
    for key in expected | {"lpips_diversity_std", "loss_variance"}:
        assert one[key] > 0, key
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert one["inference_time"] > 0
    table = (tmp_path / "devices2" / "evaluation.md").read_text()
    assert "| Model | FID ↓ | 1-Step Error ↓ | Inference Time (s) ↓ | LPIPS ↓ |" in table
    assert "| digits/lambda1/version_0 |" in table  # rows are named after their run


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


def test_evaluate_writes_tables_for_several_checkpoints(tmp_path, capsys):
    """Low-dimensional runs: distances to fresh true samples and the loss variance the
    checkpoint kept; one row per checkpoint, named after the run and the checkpoint."""
    early = _fit(ROOT / "configs/quickstart.yaml", tmp_path / "early", steps=4).trainer.checkpoint_callback
    cli = _fit(ROOT / "configs/quickstart.yaml", tmp_path, "--trainer.val_check_interval=4", steps=8)
    ckpt_dir = Path(cli.trainer.checkpoint_callback.last_model_path).parent
    shutil.copy(early.last_model_path, ckpt_dir / "epoch=0-step=4.ckpt")  # an earlier checkpoint of the run
    ckpts = [str(ckpt_dir / "last.ckpt"), str(ckpt_dir / "epoch=0-step=4.ckpt")]
    out = tmp_path / "eval"
    main(["evaluate", *ckpts, "--output", str(out), "--num_samples", "200", "--steps", "4",
          "--distance_samples", "500", "--timing_repeats", "2"])  # fmt: skip
    runs = json.loads((out / "evaluation.json").read_text())["runs"]
    assert list(runs) == [
        "mmf_curriculum_instantaneous/version_0",
        "mmf_curriculum_instantaneous/version_0@epoch=0-step=4",
    ]
    last = runs["mmf_curriculum_instantaneous/version_0"]["metrics"]
    assert {"sw_1step", "sw_2step", "energy_1step", "loss_variance", "d_path"} <= set(last)
    assert "fid_1step" not in last and "lpips_path" not in last  # no images
    assert last["loss_variance"] > 0 and last["sw_1step"] > 0
    assert runs["mmf_curriculum_instantaneous/version_0@epoch=0-step=4"]["metrics"]["sw_1step"] != last["sw_1step"]
    assert (out / "evaluation.png").stat().st_size > 10_000
    md = (out / "evaluation.md").read_text()
    assert "### Table 3: path and generation quality" in md and "SW, 1 step" in md
    assert "| Model |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, match",
    [
        (["missing.ckpt"], "checkpoint missing.ckpt does not exist"),
        (["--ckpt_path", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
        ([], "no checkpoint given"),
        (["{ckpt}", "--names", "a", "b"], "--names gives 2 names for 1 checkpoints"),
        (["{ckpt}", "--steps", "1"], r"steps >= 2.*got 1000, 250, 1"),
        (["{loose}"], r"no run config for .*loose.ckpt: the checkpoint carries none.*pass --config"),
        (["{ckpt}", "--guidance_scale", "2"], r"--guidance_scale 2.0: the network of .*last.ckpt is not class-cond"),
    ],
)
def test_evaluate_names_bad_input(args, match, tmp_path, capsys):
    cli = _fit(ROOT / "configs/quickstart.yaml", tmp_path, steps=1)
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    loose = tmp_path / "loose.ckpt"  # outside its run folder, and without the run config it carries
    checkpoint = torch.load(ckpt, weights_only=True)
    del checkpoint["run_config"]
    torch.save(checkpoint, loose)
    args = [a.format(ckpt=ckpt, loose=loose) for a in args]
    with pytest.raises((SystemExit, FileNotFoundError)) as info:
        main(["evaluate", *args, "--output", str(tmp_path / "e")])
    assert re.search(match, str(info.value) + capsys.readouterr().err)


def test_download_weights_keeps_what_is_there_and_names_what_is_missing(tmp_path, capsys, monkeypatch):
    import hashlib

    from mmf_lightning.metrics import weights
    from mmf_lightning.metrics.weights import WEIGHTS

    files = {name: tmp_path / url.rsplit("/", 1)[-1] for name, (url, _) in WEIGHTS.items()}
    files["alexnet"].write_bytes(b"staged")
    # a staged file passes verification against its pin (here the digest of the staged bytes)
    monkeypatch.setitem(weights.SHA256_PREFIX, "alexnet", hashlib.sha256(b"staged").hexdigest()[:8])
    monkeypatch.setattr(weights, "VERIFIED_RECORD", tmp_path / "verified.json")
    monkeypatch.setattr(weights, "_verified", {})
    with pytest.raises(SystemExit, match=r"inception-2015-12-05-6726825d.pth.*downloads are off"):
        main(["download-weights", "--dir", str(tmp_path)])  # MMF_LIGHTNING_OFFLINE=1 in the suite
    main(["download-weights", "--dir", str(tmp_path), "--only", "alexnet"])
    assert f"present, {files['alexnet']}" in capsys.readouterr().out
    assert files["alexnet"].read_bytes() == b"staged"


def test_the_readme_evaluate_glob_matches_where_cifar10_runs_land(tmp_path, monkeypatch, torch_home_with_alexnet):
    """docs/usage.md: `evaluate runs/cifar10/*/version_0/checkpoints/last.ckpt`; the trainer preset's own paths."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))
    monkeypatch.chdir(tmp_path)
    readme = (ROOT / "docs/usage.md").read_text()
    pattern = re.search(r"evaluate (runs/cifar10/\S+last\.ckpt)", readme).group(1)
    args = ["fit", "--config", str(ROOT / "configs/cifar10/mmf_lambda1.yaml"), "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
            f"--fid.init_args.cache_dir={tmp_path / 'fid'}", *STAND_INS["cifar10"], *SMALL_UNET]  # fmt: skip
    MMFLightningCLI(args=args)
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob(pattern)] == [
        "runs/cifar10/mmf_lambda1/version_0/checkpoints/last.ckpt"
    ]


# -- spawn-based strategies ---------------------------------------------------------------------------
def test_ema_update_is_torchs_and_pickles():
    import pickle

    from torch.optim.swa_utils import get_ema_avg_fn

    from mmf_lightning.callbacks import EMAWeightAveraging
    from mmf_lightning.callbacks.ema import EMAUpdate

    ema, current = torch.randn(5), torch.randn(5)
    ours = pickle.loads(pickle.dumps(EMAUpdate(0.9)))
    torch.testing.assert_close(ours(ema, current, 3), get_ema_avg_fn(0.9)(ema, current, 3), rtol=0, atol=0)
    callback = pickle.loads(pickle.dumps(EMAWeightAveraging(decay=0.25, update_every_n_steps=2)))
    assert callback._kwargs["avg_fn"].decay == 0.25 and callback.update_every_n_steps == 2
    with pytest.raises(ValueError, match="EMA decay must be in \\[0, 1\\], got 1.5"):
        EMAUpdate(1.5)


def test_ddp_spawn_trains_with_ema_and_refuses_a_closure_before_training(tmp_path):
    """`strategy=ddp_spawn` pickles the trainer for its processes: with the package's EMA it trains
    (the EMA moves at every optimizer step); with Lightning's
    own EMAWeightAveraging (a closure) it stops before training with one line naming the fix."""
    args = [
        "fit", "--config", str(ROOT / "configs/quickstart.yaml"), *_quiet(tmp_path, steps=4),
        "--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.val_check_interval=4",
        "--data.init_args.num_train=1024", "--model.net.init_args.width=32", "--model.net.init_args.depth=2",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "mmf_lightning", *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = tmp_path.rglob("last.ckpt")
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["global_step"] == 4
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 4  # the EMA moved at every step, in the spawned ranks

    lightning_ema = tmp_path / "lightning_ema.yaml"
    lightning_ema.write_text(
        (ROOT / "configs/quickstart.yaml").read_text().replace("mmf_lightning.callbacks.EMAWeightAveraging",
                                                               "lightning.pytorch.callbacks.EMAWeightAveraging")
    )  # fmt: skip
    args[2] = str(lightning_ema)
    proc = subprocess.run([sys.executable, "-m", "mmf_lightning", *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: trainer.strategy with start method 'spawn' must pickle every callback")
    assert "use mmf_lightning.callbacks.EMAWeightAveraging" in last
    assert len(list(tmp_path.rglob("*.ckpt"))) == 1  # the first run's: the second stopped before training


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m mmf_lightning")
    for command in ("fit", "validate", "test", "predict", "sample", "evaluate", "plot", "download-weights"):
        assert re.search(rf"^    {command} +\S", out, re.M), command


@pytest.mark.parametrize(
    "argv, code",
    [(["--help"], 0), (["sample", "--help"], 0), (["evaluate", "--help"], 0), (["plot", "--help"], 0),
     (["download-weights", "--help"], 0), (["evaluate", "missing.ckpt"], 2), (["sample", "--num_samples=1"], 2)],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)  # fmt: skip
def test_help_and_argument_errors_import_neither_torch_nor_lightning(argv, code):
    """The list of commands, each command's help and its argument errors answer before the heavy imports (which
    cost 5-15 s on a busy machine)."""
    script = (
        f"import runpy, sys\nsys.argv = ['mmf_lightning', *{argv!r}]\n"
        "try:\n    runpy.run_module('mmf_lightning', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, 'lightning' in sys.modules, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == f"{code} False False", proc.stdout + proc.stderr


def test_a_quickstart_run_prints_nothing_the_user_cannot_act_on(tmp_path):
    """No Lightning advertisement, no third-party deprecation warnings (narrowly filtered), and
    the batch / learning-rate line stays."""
    args = [sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
            *_quiet(tmp_path, steps=4), "--trainer.val_check_interval=4",
            "--data.init_args.num_train=1024"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("Tip:", "litlogger", "LeafSpec", "torch.jit.script", "Warning"):
        assert noise not in proc.stderr, proc.stderr
    assert "global batch 256 = 1 device(s) x 256 rows" in proc.stderr


def test_the_filters_are_narrow():
    """The same deprecation message from anywhere else than the library that raises it still shows."""
    import warnings

    from mmf_lightning.utils.console import quiet_third_party

    quiet_third_party()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_third_party()  # after simplefilter: the package's filters come first again
        warnings.warn("`torch.jit.script` is deprecated. Please switch", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`torch.jit.script` is deprecated. Please switch"]


# -- evaluate says what it does ---------------------------------------------------------------------------
def test_evaluate_quick_states_its_counts_and_a_sweep_shares_the_reference(digits_checkpoint, tmp_path, capsys,
                                                                          monkeypatch):  # fmt: skip
    """Two checkpoints of one run config (as in a sweep): the FID extractor and reference statistics
    are prepared once; each checkpoint's metric groups are printed with their sample counts and
    times; --quick's smaller counts are stated in the report, and an explicit count still wins."""
    from mmf_lightning.callbacks import FID

    prepared = []
    prepare = FID.prepare
    monkeypatch.setattr(FID, "prepare", lambda self, *a, **k: (prepared.append(self), prepare(self, *a, **k))[1])
    out = tmp_path / "quick"
    main(
        [
            "evaluate",
            str(digits_checkpoint),
            "--ckpt_path",
            str(digits_checkpoint),
            "--names",
            "a",
            "b",
            "--quick",
            "--num_samples",
            "100",
            "--output",
            str(out),
        ]
    )  # fmt: skip  (LPIPS off as in the run's PathMetrics)
    assert len(prepared) == 1
    printed = capsys.readouterr().out
    assert "[1/2] a (quick: smaller sample counts)" in printed and "[2/2] b" in printed
    assert re.search(r"FID reference statistics: DigitsDataModule, train split, [0-9.]+ s", printed)
    assert re.search(r"  path metrics: 100 samples x 8 steps, [0-9.]+ s", printed)
    assert re.search(r"  FID: 300 samples, 1/2 step\(s\), [0-9.]+ s", printed)  # the run's 300, below quick's 1000
    report = json.loads((out / "evaluation.json").read_text())
    assert report["quick"] is True and report["settings"]["num_samples"] == 100 and report["settings"]["steps"] == 8
    assert report["settings"]["timing_repeats"] == 5
    timings = report["runs"]["a"]["timings"]
    assert set(timings) == {"path metrics", "FID", "inference time"} and all(
        t["seconds"] >= 0 for t in timings.values()
    )
    assert report["runs"]["a"]["metrics"] == report["runs"]["b"]["metrics"] | {
        "inference_time": report["runs"]["a"]["metrics"]["inference_time"]
    }
    assert (out / "evaluation.md").read_text().count("**Quick evaluation**") == 1


@pytest.mark.parametrize(
    "config, extra, expected",
    [
        ("quickstart.yaml", ["--model.lr=-1"], "error: need lr > 0 and 0 <= min_lr <= lr, got lr=-1.0"),
        ("quickstart.yaml", ["--model.net.init_args.dim=3"], "error: the network expects data of shape (3,)"),
        ("cifar10/mmf_curriculum.yaml", ["--data.init_args.root={tmp}"], "error: CIFAR-10 not found: expected"),
        (
            "cifar10/mmf_curriculum.yaml",
            [],
            "error: LPIPS' AlexNet backbone weights alexnet-owt-7be5be79.pth are missing",
        ),
    ],
    ids=["bad value", "bad shape", "missing dataset", "missing weights"],
)
def test_errors_the_user_can_fix_end_in_one_line(config, extra, expected, tmp_path, capsys, monkeypatch):
    """Through the command line (main), not as a traceback: `error: ...; <what to do>`, exit status 2."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    args = ["fit", "--config", str(ROOT / "configs" / config), *_quiet(tmp_path), *SMALL_UNET * ("cifar" in config)]
    if "root" not in " ".join(extra) and "cifar" in config:
        args += STAND_INS["cifar10"]
    with pytest.raises(SystemExit) as info:
        main([*args, *(e.format(tmp=tmp_path) for e in extra)])
    err = capsys.readouterr().err.rstrip().splitlines()
    assert info.value.code == 2
    assert err[-1].startswith(expected) and ";" in err[-1], err[-5:]
    assert not any(line.startswith("Traceback") for line in err)


def test_sample_takes_a_run_folder_or_a_folder_of_runs_and_tells_a_config_from_a_checkpoint(tmp_path):
    """`sample` in a process of its own: a run folder samples its last.ckpt, a folder of two runs writes one .npz per
    run named after it; a YAML file is "not a checkpoint" (it was called a pickle that could run code), a folder
    without runs is named as such, a missing path "does not exist" (each in one line, exit 2)."""
    for version in ("a", "b"):
        _fit(ROOT / "configs/quickstart.yaml", tmp_path, f"--trainer.logger.init_args.version={version}", steps=2)
    runs = tmp_path / "mmf_curriculum_instantaneous"

    def sample(given, output):
        command = [sys.executable, "-m", "mmf_lightning", "sample", "--ckpt_path", str(given), "--output",
                   str(output), "--num_samples", "8"]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)

    assert sample(runs / "a", tmp_path / "one.npz").returncode == 0
    assert np.load(tmp_path / "one.npz")["samples"].shape == (8, 2)
    assert sample(runs, tmp_path / "all.npz").returncode == 0
    assert sorted(p.name for p in tmp_path.glob("all_*.npz")) == ["all_a.npz", "all_b.npz"]
    (tmp_path / "empty").mkdir()
    for given, message in [
        (
            ROOT / "configs/quickstart.yaml",
            "cannot be read as a checkpoint: it is a YAML file (a config goes to --config)",
        ),
        (tmp_path / "empty", "is a folder with no checkpoint of a run under it"),
        (tmp_path / "nope.ckpt", "nope.ckpt does not exist"),
    ]:
        proc = sample(given, tmp_path / "x.npz")
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr


def test_the_sample_picture_of_2d_data_shows_the_data_behind(tmp_path, monkeypatch):
    from mmf_lightning import figures

    cli = _fit(ROOT / "configs/quickstart.yaml", tmp_path, steps=2)
    drawn = {}
    real = figures.save_samples_figure
    monkeypatch.setattr(figures, "save_samples_figure", lambda *a, **k: drawn.update(k) or real(*a, **k))
    main(["sample", "--ckpt_path", cli.trainer.checkpoint_callback.last_model_path, "--output",
          str(tmp_path / "s.npz"), "--num_samples", "300"])  # fmt: skip
    reference = drawn["reference"]
    assert reference.shape == (300, 2) and reference.abs().max() <= 2.0 + 1e-6  # the checkerboard's points


def test_progress_bars_print_every_few_percent_into_a_log(capsys):
    """Into a file (no terminal) a bar writes about 25 updates, not one per step; Lightning's tqdm bar refreshes
    every 4% of the run."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from mmf_lightning.commands.fit import quiet_progress_bar
    from mmf_lightning.utils.console import progress

    for _ in progress(range(1000), desc="steps"):
        pass
    updates = [u for u in capsys.readouterr().err.replace("\r", "\n").splitlines() if "steps" in u]
    assert 20 <= len(updates) <= 30, len(updates)
    trainer = L.Trainer(max_steps=1000, callbacks=[TQDMProgressBar()], logger=False, enable_checkpointing=False)
    quiet_progress_bar(trainer)
    assert trainer.progress_bar_callback.refresh_rate == 40
