"""Metric weights are verified against pinned SHA-256 prefixes: after a download, and before first
use from the hub cache or a configured path; a deliberately different file needs
$MMF_LIGHTNING_TRUST_WEIGHTS. Digests in the expectations are computed here with hashlib."""

import hashlib
import json
import os

import pytest
import torch

from mmf_lightning.commands import main
from mmf_lightning.metrics import weights
from mmf_lightning.metrics.weights import TRUST_ENV, WeightsMismatch, resolve_weights


@pytest.fixture
def clean(tmp_path, monkeypatch):
    """No trusted files, an empty verification record in tmp_path, nothing remembered."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setattr(weights, "VERIFIED_RECORD", tmp_path / "record" / "verified.json")
    monkeypatch.setattr(weights, "_verified", {})
    monkeypatch.setattr(weights, "_warned", set())
    return tmp_path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pins_are_the_prefixes_the_file_names_carry():
    for name, (url, _) in weights.WEIGHTS.items():
        assert url.endswith(f"-{weights.SHA256_PREFIX[name]}.pth")
    assert weights.SHA256_PREFIX == {"alexnet": "7be5be79", "inception": "6726825d"}


def test_a_wrong_file_is_refused_by_default_and_used_when_trusted(clean, torch_home_with_alexnet, monkeypatch):
    from mmf_lightning.metrics.lpips import LPIPS

    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))
    (path,) = torch_home_with_alexnet.rglob("alexnet-owt-7be5be79.pth")  # untrained: not torchvision's file
    found = _sha256(path)
    assert not found.startswith("7be5be79")
    with pytest.raises(WeightsMismatch) as info:
        LPIPS()
    message = str(info.value)
    expected = "expected a SHA-256 starting with 7be5be79"
    for part in (str(path), expected, f"found {found}", "download-weights", TRUST_ENV):
        assert part in message
    assert "\n" not in message

    monkeypatch.setenv(TRUST_ENV, os.pathsep.join(["/elsewhere/x.pth", str(path)]))
    with pytest.warns(UserWarning, match=rf"{path.name} are used WITHOUT digest verification"):
        lpips = LPIPS()
    a = torch.zeros(1, 3, 32, 32)
    assert lpips(a, a).shape == (1,)


def test_a_configured_inception_file_is_verified(clean, tmp_path):
    from mmf_lightning.metrics.features import inception_v3

    path = tmp_path / "my-inception.pth"
    torch.save({"fc.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsMismatch, match=rf"{path} fail verification: expected a SHA-256 starting with "
                       rf"6726825d, found {_sha256(path)}"):  # fmt: skip
        inception_v3(str(path))


def test_a_verified_file_is_hashed_once_until_it_changes(clean, tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"the right weights")
    digest = _sha256(path)
    monkeypatch.setitem(weights.SHA256_PREFIX, "alexnet", digest[:8])
    hashed = []
    real_sha256 = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: hashed.append(p) or real_sha256(p))

    assert resolve_weights("alexnet", path) == path
    assert resolve_weights("alexnet", path) == path
    monkeypatch.setattr(weights, "_verified", {})  # a new process: the record on disk remembers
    assert resolve_weights("alexnet", path) == path
    assert len(hashed) == 1
    record = json.loads(weights.VERIFIED_RECORD.read_text())
    assert record[str(path.resolve())]["sha256"] == digest

    path.write_bytes(b"other weights, same name")  # replaced: new size and mtime, hashed again
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(WeightsMismatch, match=f"found {hashlib.sha256(b'other weights, same name').hexdigest()}"):
        resolve_weights("alexnet", path)
    assert len(hashed) == 2


def _fake_download(content: bytes, calls: list):
    def download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        with open(dst, "wb") as f:
            f.write(content)

    return download


def test_a_download_is_verified_before_it_takes_the_files_name(clean, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMF_LIGHTNING_OFFLINE", "0")  # the download itself is faked: no network
    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", _fake_download(b"an error page", calls))
    target = weights.hub_path("alexnet")
    with pytest.raises(WeightsMismatch, match=rf"downloaded from .*alexnet-owt-7be5be79.pth .*found "
                       rf"{hashlib.sha256(b'an error page').hexdigest()}; the download was discarded"):  # fmt: skip
        resolve_weights("alexnet")
    assert calls and not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []  # no temp file left

    good = b"the published weights"
    monkeypatch.setitem(weights.SHA256_PREFIX, "alexnet", hashlib.sha256(good).hexdigest()[:8])
    monkeypatch.setattr(torch.hub, "download_url_to_file", _fake_download(good, calls))
    assert resolve_weights("alexnet") == target and target.read_bytes() == good


def test_download_weights_verifies_what_is_there_and_what_it_fetches(clean, tmp_path, monkeypatch, capsys):
    staged = tmp_path / "staged"
    staged.mkdir()
    wrong = staged / "alexnet-owt-7be5be79.pth"
    wrong.write_bytes(b"staged by hand, truncated")
    with pytest.raises(SystemExit, match=rf"LPIPS' AlexNet backbone: .*{wrong} fail verification.*found "
                       rf"{_sha256(wrong)}"):  # fmt: skip
        main(["download-weights", "--dir", str(staged), "--only", "alexnet"])

    monkeypatch.setenv("MMF_LIGHTNING_OFFLINE", "0")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _fake_download(b"not inception", []))
    with pytest.raises(SystemExit, match="FID's InceptionV3: .*expected a SHA-256 starting with 6726825d"):
        main(["download-weights", "--dir", str(tmp_path / "fresh"), "--only", "inception"])
    assert not (tmp_path / "fresh" / "weights-inception-2015-12-05-6726825d.pth").exists()

    monkeypatch.setenv(TRUST_ENV, str(wrong))  # declared trusted: staged as it is
    with pytest.warns(UserWarning, match="WITHOUT digest verification"):
        main(["download-weights", "--dir", str(staged), "--only", "alexnet"])
    assert f"present, {wrong}" in capsys.readouterr().out
