"""Distribution shift (paper section 5.4): a checkpoint evaluated on a shifted set with
`evaluate --data`; the FID reference statistics are the shifted set's. The digits corrupted
like CIFAR-10-C are the offline shifted set."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml
from helpers import SMALL_UNET

from mmf_lightning.commands import main
from mmf_lightning.commands.fit import MMFLightningCLI
from mmf_lightning.data import DigitsDataModule, ShiftDataModule

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs/digits/lambda1.yaml"
NOISE = ROOT / "configs/presets/data_shift_digits_gaussian_noise.yaml"
FAST = ["--num_samples", "40", "--steps", "2", "--batch_size", "20", "--timing_repeats", "0", "--no-lpips"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits run (small UNet) two steps in, FID in the digits classifier's features: its last.ckpt
    (beside the run's config.yaml) and the classifier's weights file."""
    tmp = tmp_path_factory.mktemp("digits_run")
    weights = tmp.parent / "digits.pt"  # pytest's base folder: trained once for the whole suite
    cli = MMFLightningCLI(args=[
        "fit", "--config", str(DIGITS), *SMALL_UNET, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        f"--trainer.default_root_dir={tmp}", f"--trainer.logger.init_args.save_dir={tmp}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--fid.init_args.num_samples=200", "--fid.init_args.batch_size=64", f"--fid.init_args.cache_dir={tmp / 'fid'}",
        f"--fid.init_args.feature_extractor.init_args.weights_path={weights}",
    ])  # fmt: skip
    return Path(cli.trainer.checkpoint_callback.last_model_path), weights


def _report(out: Path) -> dict:
    (run,) = json.loads((out / "evaluation.json").read_text())["runs"].values()
    return run


def _noisy_digits_val(std: float, seed: int = 0) -> torch.Tensor:
    """Independently of the package: scikit-learn digits' validation split (the last 20 % of each
    class, in index order) with Gaussian noise of ``std`` on [0, 1] pixels, image i's noise from a
    generator seeded with seed * 1_000_003 + i: uint8 (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    val = np.zeros(len(images), dtype=bool)
    for c in range(10):
        idx = np.nonzero(digits.target == c)[0]
        val[idx[len(idx) - round(0.2 * len(idx)) :]] = True
    out = []
    for i, image in enumerate(images[val]):
        noise = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
        x = (torch.from_numpy(image)[None].float() / 255 + std * noise).clamp(0, 1)
        out.append((x * 255).round().to(torch.uint8))
    return torch.stack(out)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_ood_fid_of_a_digits_checkpoint_on_noisy_digits(digits_run, tmp_path):
    """`evaluate CKPT --data <shifted digits>`: FID against the shifted set, equal to a Frechet
    distance computed here from the same samples and extractor and the corrupted images made
    here; it differs from the in-distribution FID of the same checkpoint."""
    from mmf_lightning import MeanFlowModule
    from mmf_lightning.metrics.digits_classifier import DigitsClassifier
    from mmf_lightning.metrics.features import to_uint8

    ckpt, weights = digits_run
    proc = subprocess.run(
        [sys.executable, "-m", "mmf_lightning", "evaluate", str(ckpt), "--data", str(NOISE),
         "--output", str(tmp_path / "ood"), "--fid_num_samples", "200", *FAST],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ood = _report(tmp_path / "ood")
    main(["evaluate", str(ckpt), "--output", str(tmp_path / "in"), "--fid_num_samples", "200", *FAST])
    clean = _report(tmp_path / "in")

    # independently: the run's extractor and the FID's block-seeded samples (block b of 64: seed b)
    extractor = DigitsClassifier(str(weights))
    module = MeanFlowModule.load_from_checkpoint(ckpt, map_location="cpu")
    sizes = [64, 64, 64, 8]
    with torch.no_grad():
        samples = torch.cat(
            [module.sample(n, 1, generator=torch.Generator().manual_seed(b)) for b, n in enumerate(sizes)]
        )
        fake = extractor(to_uint8(samples)).double().numpy()
        real = extractor(_noisy_digits_val(std=0.08)).double().numpy()  # severity 3: std 0.08
    expected = _frechet(fake, real)
    assert ood["metrics"]["fid_1step"] == pytest.approx(expected, rel=1e-4)
    assert clean["metrics"]["fid_1step"] != pytest.approx(ood["metrics"]["fid_1step"], rel=1e-3)

    # the report says what each row was evaluated on
    assert "kind=digits_gaussian_noise, severity=3" in ood["description"]
    assert ood["from"] == f"--data {NOISE}"
    assert "kind=digits_gaussian_noise, severity=3" in ood["fid_protocol"]["reference"]
    assert clean["description"].startswith("DigitsDataModule(") and "the run config it carries" in clean["from"]
    md = (tmp_path / "ood" / "evaluation.md").read_text()
    assert re.search(r"\| ShiftDataModule\(kind=digits_gaussian_noise, severity=3.*\| ShiftDataModule\(kind=", md)


def test_explicit_config_and_data_replace_the_runs(digits_run, tmp_path):
    """`--config` given explicitly replaces the config.yaml beside the run; `--data` as a class path
    with `--data.init_args.KEY=VALUE` replaces the data."""
    ckpt, _ = digits_run
    config = yaml.safe_load((ckpt.parent.parent / "config.yaml").read_text())
    config["data"] = {"class_path": "mmf_lightning.data.ShiftDataModule",
                      "init_args": {"kind": "digits_gaussian_blur", "severity": 5, "num_workers": 0}}  # fmt: skip
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    main(["evaluate", str(ckpt), "--config", str(other), "--output", str(tmp_path / "a"), "--fid", "off", *FAST])
    run = _report(tmp_path / "a")
    assert run["config"] == str(other) and "kind=digits_gaussian_blur, severity=5" in run["description"]

    main(["evaluate", str(ckpt), "--data", "mmf_lightning.data.ShiftDataModule",
          "--data.init_args.kind=digits_gaussian_blur", "--data.init_args.num_workers=0",
          "--output", str(tmp_path / "b"), "--fid", "off", *FAST])  # fmt: skip
    run = _report(tmp_path / "b")
    assert "kind=digits_gaussian_blur, severity=3" in run["description"]
    assert run["from"].startswith(
        "--data mmf_lightning.data.ShiftDataModule --data.init_args.kind=digits_gaussian_blur"
    )


@pytest.mark.parametrize(
    "args, match",
    [
        (["--config", str(ROOT / "configs/quickstart.yaml")],
         r"error: checkpoint .*last.ckpt has a network for data of shape \(1, 8, 8\) but the data of "
         r".*quickstart.yaml \(ToyDataModule\) has shape \(2,\); evaluate it on data of the task"),
        (["--data", str(ROOT / "configs/presets/data_shift_svhn.yaml")],
         r"shape \(1, 8, 8\) but the data of --data .*data_shift_svhn.yaml \(ShiftDataModule\) "
         r"has shape \(3, 32, 32\)"),
        (["--data", "mmf_lightning.data.ShiftDataModule", "--data.init_args.kind=mnist"],
         r"error: .*last.ckpt: .*kind must be one of"),
        (["--data", "nope.yaml"], r"error: --data nope.yaml does not exist; pass a YAML file"),
        (["--data.init_args.kind"], r"unrecognized arguments: --data.init_args.kind .*--data.init_args.KEY=VALUE"),
    ],
)  # fmt: skip
def test_evaluate_on_data_of_another_task_is_named(digits_run, tmp_path, capsys, args, match):
    ckpt, _ = digits_run
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(ckpt), *args, "--output", str(tmp_path / "e"), *FAST])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err


def test_shifted_digits_are_the_fid_reference_and_are_deterministic():
    noisy = ShiftDataModule("digits_gaussian_noise", severity=3)
    assert noisy.data_shape == (1, 8, 8)
    ref = torch.stack([item["x"] for item in noisy.reference_set("train")])
    again = torch.stack(
        [item["x"] for item in ShiftDataModule("digits_gaussian_noise", severity=3).reference_set("val")]
    )
    torch.testing.assert_close(ref, again, rtol=0, atol=0)  # the same corrupted images, whatever the split
    clean = torch.stack([item["x"] for item in DigitsDataModule().reference_set("val")])
    expected = _noisy_digits_val(0.08).float() / 255 * 2 - 1
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-6)
    assert (ref - clean).abs().mean() > 0.03
    blurred = ShiftDataModule("digits_gaussian_blur", severity=5, image_size=16)
    assert blurred.data_shape == (1, 16, 16) and blurred.reference_set()[0]["x"].shape == (1, 16, 16)
    names = {
        ShiftDataModule(kind, severity=s).reference_name(split)
        for kind in ("digits_gaussian_noise", "digits_gaussian_blur")
        for s in (1, 3)
        for split in ("train", "val")
    }
    assert len(names) == 4 and all("severity=" in k and "kind=digits_" in k for k in names)
    # the FID cache is keyed by the reference set's contents: every shifted set has its own
    from mmf_lightning.utils.fingerprint import dataset_fingerprint

    prints = {dataset_fingerprint(dm.reference_set("val")) for dm in (
        DigitsDataModule(), noisy, ShiftDataModule("digits_gaussian_noise", severity=4),
        ShiftDataModule("digits_gaussian_noise", severity=3, seed=1),
        ShiftDataModule("digits_gaussian_blur", severity=3),
    )}  # fmt: skip
    assert len(prints) == 5
    # the CIFAR-10 kinds keep their shape and name the missing data, not a bare NotImplementedError
    cifar = ShiftDataModule("cifar10_gaussian_blur", root="/nonexistent")
    assert cifar.data_shape == (3, 32, 32)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found: expected /nonexistent/cifar-10-batches-py"):
        cifar.reference_set("train")
    with pytest.raises(ValueError, match="for evaluation"):
        noisy.setup("fit")


def test_evaluate_takes_a_run_folder_or_a_folder_of_runs_and_a_config_with_includes(digits_run, tmp_path):
    """`evaluate <run folder>` (its last.ckpt) and `evaluate <folder of runs>` (each run's) with `--config` a file of
    configs/ whose `data:` and `fid:` are includes, read as `fit` reads them (it crashed on the fid include)."""
    ckpt, _ = digits_run
    run_folder = ckpt.parents[1]
    for given in (run_folder, run_folder.parent.parent):
        out = tmp_path / given.name
        main(["evaluate", str(given), "--config", str(ROOT / "configs/digits/quick.yaml"), "--output", str(out),
              "--fid", "off", *FAST])  # fmt: skip
        (name,) = json.loads((out / "evaluation.json").read_text())["runs"]
        run = _report(out)
        assert run["checkpoint"] == str(ckpt) and run["config"] == str(ROOT / "configs/digits/quick.yaml")
