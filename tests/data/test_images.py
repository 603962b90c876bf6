"""Image DataModules on data the test makes or the package ships: shapes, ranges, subsets, and the
errors a missing or broken dataset must give before training."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmf_lightning.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    ImageNet64DataModule,
    ShiftDataModule,
    to_unit_range,
)
from mmf_lightning.data.shift import BLUR_SIGMA, NOISE_STD, corrupt


def test_digits_real_images_in_range():
    dm = DigitsDataModule()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (64, 1, 8, 8) and batch["y"].shape == (64,)
    assert batch["x"].min() == -1.0 and batch["x"].max() == 1.0
    assert len(dm.train_set) + len(dm.val_set) == 1797
    assert sorted(set(dm.val_set[i]["y"].item() for i in range(len(dm.val_set)))) == list(range(10))
    # [-1, 1] and back: the pixel values of sklearn's digits (0..16, scaled to 0..255)
    from sklearn.datasets import load_digits

    first = to_unit_range(dm.train_set[0]["x"]) * 16
    torch.testing.assert_close(first[0], torch.tensor(load_digits().images[0], dtype=torch.float32), atol=0.05, rtol=0)


def test_digits_subset_is_deterministic_and_class_balanced():
    picks = []
    for _ in range(2):
        dm = DigitsDataModule(subset_fraction=0.1, subset_seed=5)
        dm.setup()
        picks.append(torch.stack([dm.train_set[i]["x"] for i in range(len(dm.train_set))]))
    assert torch.equal(*picks)
    labels = torch.stack([dm.train_set[i]["y"] for i in range(len(dm.train_set))])
    counts = torch.bincount(labels)
    assert counts.max() - counts.min() <= 1 and len(labels) == 143


def test_digits_resized_and_flipped():
    dm = DigitsDataModule(image_size=16, random_flip=True)
    dm.setup()
    assert dm.train_set[0]["x"].shape == (1, 16, 16) and dm.data_shape == (1, 16, 16)


def test_cifar10_missing_names_the_path_and_the_fix(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"expected {tmp_path}/cifar-10-batches-py.*download=true"):
        dm.setup()
    with pytest.raises(ValueError, match=r"subset fraction must be in \(0, 1\], got 2.0"):
        CIFAR10DataModule(subset_fraction=2.0)


def _write_imagenet64_npz(root, n_batches=2, per_batch=12):
    rng = np.random.default_rng(0)
    for i in range(1, n_batches + 1):
        data = rng.integers(0, 256, (per_batch, 12288), dtype=np.uint8)
        np.savez(root / f"train_data_batch_{i}.npz", data=data, labels=rng.integers(1, 1001, per_batch), mean=0)
    np.savez(root / "val_data.npz", data=rng.integers(0, 256, (6, 12288), dtype=np.uint8), labels=np.arange(1, 7))


def test_imagenet64_npz_batches_and_cache(tmp_path):
    _write_imagenet64_npz(tmp_path)
    dm = ImageNet64DataModule(root=str(tmp_path), batch_size=4, num_workers=0, random_flip=False)
    dm.setup()
    assert len(dm.train_set) == 24 and len(dm.val_set) == 6
    item = dm.val_set[2]
    assert item["x"].shape == (3, 64, 64) and item["y"] == 2  # labels 1..1000 -> 0..999
    # channel-major rows: the first 4096 bytes are the red plane
    raw = np.load(tmp_path / "val_data.npz")["data"][2]
    torch.testing.assert_close(
        to_unit_range(item["x"][0]) * 255,
        torch.tensor(raw[:4096].reshape(64, 64), dtype=torch.float32),
        atol=1e-3,
        rtol=0,
    )
    assert (tmp_path / "cache" / "train_images.npy").is_file()
    assert isinstance(dm.train_set.base.images, np.memmap)  # every rank maps the cache, none loads it
    (tmp_path / "train_data_batch_1.npz").unlink()  # a second run reads the cache, not the batches
    dm2 = ImageNet64DataModule(root=str(tmp_path), batch_size=4, num_workers=0, random_flip=False)
    dm2.setup()
    assert torch.equal(dm2.train_set[5]["x"], dm.train_set[5]["x"])


def test_imagenet64_truncated_and_missing(tmp_path):
    _write_imagenet64_npz(tmp_path)
    path = tmp_path / "train_data_batch_2.npz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="train_data_batch_2.npz is truncated or not an ImageNet-64 batch"):
        ImageNet64DataModule(root=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match="ImageNet-64 \\(npz\\) not found"):
        ImageNet64DataModule(root=str(tmp_path / "nothing")).setup()


def _write_folder(root, sizes, classes=("cat", "dog")):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_at_a_chosen_resolution(tmp_path):
    _write_folder(tmp_path, sizes=[20, 40, 24, 36, 30])
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=2, num_workers=0, val_fraction=0.2)
    assert dm.data_shape == (3, 16, 16) and dm.num_classes == 2
    dm.setup()
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2
    assert dm.train_set[0]["x"].shape == (3, 16, 16)
    grey = ImageFolderDataModule(str(tmp_path), image_size=8, channels=1, batch_size=2, num_workers=0)
    grey.setup()
    assert grey.train_set[0]["x"].shape == (1, 8, 8)


def test_image_folder_bad_input(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images under"):
        ImageFolderDataModule(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolderDataModule(str(tmp_path / "absent"))
    _write_folder(tmp_path / "mixed", sizes=[16, 16, 32])
    with pytest.raises(ValueError, match=r"images of different sizes: .* is 16x16, .* is 32x32; set image_size"):
        ImageFolderDataModule(str(tmp_path / "mixed"))
    _write_folder(tmp_path / "broken", sizes=[16, 16])
    (tmp_path / "broken" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"dog/1.png is not a readable image"):
        ImageFolderDataModule(str(tmp_path / "broken"), image_size=16)


def test_corruptions_follow_cifar10c_parameters():
    g = torch.Generator().manual_seed(0)
    image = torch.full((3, 32, 32), 0.5)
    for severity in range(1, 6):
        noisy = corrupt(image, "gaussian_noise", severity, g)
        assert abs((noisy - image).std().item() - NOISE_STD[severity - 1]) < 0.005
    stripes = torch.zeros(3, 32, 32)
    stripes[:, :, ::2] = 1.0
    blurred = [corrupt(stripes, "gaussian_blur", s) for s in range(1, 6)]
    contrast = [(b[:, 8:24, 8:24].max() - b[:, 8:24, 8:24].min()).item() for b in blurred]
    assert contrast == sorted(contrast, reverse=True) and contrast[0] < 1.0  # stronger blur, less contrast
    assert abs(blurred[2].mean().item() - 0.5) < 0.02 and BLUR_SIGMA[2] == 0.7
    with pytest.raises(ValueError, match="severity must be 1 to 5, got 6"):
        corrupt(image, "gaussian_noise", 6)


def test_shift_sets_missing_and_bad_kind(tmp_path):
    for kind, name in (("svhn", "test_32x32.mat"), ("stl10", "stl10_binary")):
        with pytest.raises(FileNotFoundError, match=rf"{kind.upper()} not found: expected .*{name}.*download=true"):
            ShiftDataModule(kind, root=str(tmp_path)).setup("validate")
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        ShiftDataModule("cifar10_gaussian_blur", root=str(tmp_path)).setup("validate")
    with pytest.raises(ValueError, match="kind must be one of"):
        ShiftDataModule("mnist")
    with pytest.raises(ValueError, match="for evaluation"):
        ShiftDataModule("svhn").setup("fit")


DDP_CACHES = """
import os, sys, time
from pathlib import Path

import lightning as L
import torch

from mmf_lightning.callbacks import FID
from mmf_lightning.data import ImageNet64DataModule
from mmf_lightning.metrics.digits_classifier import DigitsClassifier

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])


def count(what):
    with open(out / "builds.txt", "a") as f:
        f.write(f"{what} {rank}\\n")


write_cache, train = ImageNet64DataModule._write_npy_cache, DigitsClassifier._train


def counted_write(self, split):
    count(f"imagenet {self.root.name} {split}")
    return write_cache(self, split)


def counted_train(self, *args):
    count("digits")
    time.sleep(1.0)  # widen the window in which the other rank would also start training
    return train(self, *args)


ImageNet64DataModule._write_npy_cache, DigitsClassifier._train = counted_write, counted_train

# torchrun starts both ranks at once: both ask for the digits classifier before its file exists
classifier = DigitsClassifier(str(out / "weights" / "digits.pt"))


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3 * 64 * 64, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch["x"].flatten(1)).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


dm = ImageNet64DataModule(root=str(out / "in64"), batch_size=4, num_workers=0, random_flip=False)
fid = FID(num_samples=10, steps=(1,), feature_extractor=classifier, batch_size=5, cache_dir=str(out / "fid"))
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, limit_val_batches=0, logger=False,
                    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                    default_root_dir=str(out), callbacks=[fid])
trainer.fit(Tiny(), dm)

# without prepare_data (a notebook, `evaluate`): both ranks set up a fresh root at the same moment
trainer.strategy.barrier()
other = ImageNet64DataModule(root=str(out / "in64b"), batch_size=4, num_workers=0, random_flip=False)
other.setup("fit")
assert len(other.train_set) == 24
trainer.strategy.barrier()
"""


def test_caches_are_built_once_under_ddp_without_temp_files(tmp_path):
    """Two ranks started together by torchrun (as on a cluster): the ImageNet-64 npy cache is
    built once (in prepare_data; and once under the lock when setup runs without it), the
    digits classifier is trained once, the FID reference statistics are saved once, and no
    temporary file is left behind; every cache holds what a single process computes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mmf_lightning.metrics.digits_classifier import DigitsClassifier
    from mmf_lightning.metrics.fid import feature_statistics

    for name in ("in64", "in64b"):
        (tmp_path / name).mkdir()
        _write_imagenet64_npz(tmp_path / name)
    script = tmp_path / "ddp_caches.py"
    script.write_text(DDP_CACHES)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    builds = sorted(line.rsplit(" ", 1)[0] for line in (tmp_path / "builds.txt").read_text().splitlines())
    assert builds == ["digits"] + [f"imagenet {r} {s}" for r in ("in64", "in64b") for s in ("train", "val")]
    assert [p for p in tmp_path.rglob("*") if p.name.endswith((".partial", ".tmp.npy"))] == []

    for name in ("in64", "in64b"):  # the cache holds the batches' pixels and labels, in order
        batches = [np.load(tmp_path / name / f"train_data_batch_{i}.npz") for i in (1, 2)]
        images = np.load(tmp_path / name / "cache" / "train_images.npy")
        assert np.array_equal(images, np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 64, 64))
        labels = np.load(tmp_path / name / "cache" / "train_labels.npy")
        assert np.array_equal(labels, np.concatenate([b["labels"] for b in batches]) - 1)

    (stats_file,) = (tmp_path / "fid").glob("*.pt")
    saved = torch.load(stats_file, weights_only=True)
    classifier = DigitsClassifier(str(tmp_path / "weights" / "digits.pt"))  # loads the file the run trained
    dm = ImageNet64DataModule(root=str(tmp_path / "in64"), num_workers=0)
    one = feature_statistics(classifier, dm.reference_set("train"), 7, "cpu")
    assert int(saved["n"]) == int(one["n"]) == 24
    # float32 features from other batch splits and thread counts: equal to float32 rounding
    torch.testing.assert_close(saved["sum"], one["sum"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(saved["cov_sum"], one["cov_sum"], rtol=1e-5, atol=1e-6)
