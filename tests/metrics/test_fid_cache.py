"""The FID reference-statistics cache is keyed by what the statistics were computed from: the
reference set's contents and the extractor. Expected values come from the raw uint8 images
(not through the code's own conversion)."""

import os

import numpy as np
import pytest
import torch
from helpers import TinyExtractor
from PIL import Image

from mmf_lightning.callbacks import FID
from mmf_lightning.callbacks import fid as fid_callback
from mmf_lightning.data import DigitsDataModule, ImageFolderDataModule
from mmf_lightning.data.images import ArrayImages, LabelledImages, image_transform
from mmf_lightning.utils.fingerprint import dataset_fingerprint


def _extractor() -> TinyExtractor:
    """TinyExtractor with its bias fixed too (its default bias comes from the global generator)."""
    torch.manual_seed(0)
    return TinyExtractor()


def _prepared(dm, cache, extractor=None):
    cb = FID(num_samples=10, steps=(1,), feature_extractor=extractor or _extractor(), batch_size=512,
             cache_dir=str(cache))  # fmt: skip
    cb.prepare(dm, "cpu")
    fid = cb.metrics[1]
    return {"sum": fid.real_features_sum, "cov_sum": fid.real_features_cov_sum, "n": fid.real_features_num_samples}


def _expected(images_uint8: torch.Tensor) -> dict:
    with torch.no_grad():
        f = _extractor()(images_uint8).double()
    return {"sum": f.sum(0), "cov_sum": f.T @ f, "n": torch.tensor(len(f))}


def _assert_stats(got, expected):
    assert int(got["n"]) == int(expected["n"])
    torch.testing.assert_close(got["sum"], expected["sum"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got["cov_sum"], expected["cov_sum"], rtol=1e-9, atol=1e-9)


def _no_recompute(monkeypatch):
    monkeypatch.setattr(fid_callback, "feature_statistics", lambda *a, **k: pytest.fail("recomputed"))


def test_digits_split_fractions_get_their_own_statistics(tmp_path, monkeypatch):
    """val_fraction 0.2 and 0.5 leave 1438 and 899 training images: two cache entries, each equal
    to a fresh computation, and each reused by the next run."""
    cache = tmp_path / "fid"
    expected = {}
    for fraction, n in ((0.2, 1438), (0.5, 899)):
        dm = DigitsDataModule(val_fraction=fraction)
        raw = dm.reference_set("train").base  # the uint8 images, before any transform
        assert isinstance(raw, ArrayImages) and len(raw) == n
        expected[fraction] = _expected(torch.from_numpy(np.asarray(raw.images)))
        _assert_stats(_prepared(dm, cache), expected[fraction])
    assert len(list(cache.glob("*.pt"))) == 2
    _no_recompute(monkeypatch)
    for fraction in (0.5, 0.2):
        _assert_stats(_prepared(DigitsDataModule(val_fraction=fraction), cache), expected[fraction])


def _write_pngs(root, seed):
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def _folder_expected(root):
    # val_fraction 0.25 of 4 images per class: the last (3.png) is validation, 0-2 are the reference
    files = [root / c / f"{i}.png" for c in ("a", "b") for i in range(3)]
    return _expected(torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                                  for f in files]))  # fmt: skip


def test_a_changed_image_file_invalidates_the_cache(tmp_path, monkeypatch):
    root, cache = tmp_path / "images", tmp_path / "fid"
    _write_pngs(root, 0)

    def dm():
        return ImageFolderDataModule(str(root), val_fraction=0.25, batch_size=2, num_workers=0)

    before = _folder_expected(root)
    _assert_stats(_prepared(dm(), cache), before)
    with monkeypatch.context() as m:  # the same files again: the cache is used
        _no_recompute(m)
        _assert_stats(_prepared(dm(), cache), before)

    path = root / "a" / "1.png"
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # whatever the clock's resolution
    after = _folder_expected(root)
    assert not torch.allclose(after["sum"], before["sum"])
    _assert_stats(_prepared(dm(), cache), after)
    assert len(list(cache.glob("*.pt"))) == 2


def test_another_extractor_gets_other_statistics(tmp_path):
    dm = DigitsDataModule()
    other = _extractor()
    with torch.no_grad():
        other.proj.weight.mul_(2)
    a, b = _prepared(dm, tmp_path), _prepared(dm, tmp_path, other)
    assert not torch.allclose(a["sum"], b["sum"])
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_an_unreadable_cache_file_is_recomputed(tmp_path):
    dm = DigitsDataModule()
    first = _prepared(dm, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable FID reference statistics"):
        _assert_stats(_prepared(dm, tmp_path), first)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_fingerprint_follows_contents_not_objects(tmp_path):
    images = np.arange(6 * 64, dtype=np.uint8).reshape(6, 1, 8, 8)
    labels = np.arange(6)

    def wrap(x, size=None):
        return LabelledImages(ArrayImages(x, labels), image_transform(False, False, size))

    base = dataset_fingerprint(wrap(images))
    assert base.startswith("n6-")
    assert dataset_fingerprint(wrap(images.copy())) == base  # same bytes, other arrays
    changed = images.copy()
    changed[3, 0, 4, 4] += 1
    assert dataset_fingerprint(wrap(changed)) != base  # one pixel
    assert dataset_fingerprint(wrap(images, size=16)) != base  # another transform
    subset_a = torch.utils.data.Subset(wrap(images), [0, 1, 2])
    subset_b = torch.utils.data.Subset(wrap(images), [0, 1, 3])
    assert dataset_fingerprint(subset_a) != dataset_fingerprint(subset_b)

    # a memory map is identified by its file (name, size, mtime), not by reading its bytes
    path = tmp_path / "images.npy"
    np.save(path, images)
    mapped = dataset_fingerprint(wrap(np.load(path, mmap_mode="r")))
    assert mapped == dataset_fingerprint(wrap(np.load(path, mmap_mode="r")))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert dataset_fingerprint(wrap(np.load(path, mmap_mode="r"))) != mapped

    class Own(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def fingerprint(self):
            return "release-7"

    assert dataset_fingerprint(Own()) == dataset_fingerprint(Own())
