"""Pretrained weights the metrics need, found offline first, and verified before use.

FID's Inception (torch-fidelity's release of the TF 2015-12-05 graph) and LPIPS' AlexNet
backbone (torchvision's) are looked up, in order, at an explicit path from the config, then in
the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where ``download-weights`` and torch
itself put them). Missing, they are fetched once when allowed; when that fails the error names
the file and the two ways to provide it.

Every file is checked against a pinned SHA-256 prefix (``SHA256_PREFIX``) after a download and
before its first use in a run: a truncated, corrupted or different file would give FID/LPIPS
numbers that compare with nothing. The digest of a file that passed is remembered by path, size
and modification time (``VERIFIED_RECORD``), so a 100 MB file is hashed once, not every run. A
file deliberately different (your own conversion, a test's untrained network) is used only when
its path is listed in ``$MMF_LIGHTNING_TRUST_WEIGHTS`` (paths separated by ``os.pathsep``), with
a warning.
"""

import hashlib
import json
import os
import warnings
from pathlib import Path

from mmf_lightning.utils.files import atomic_write, file_lock

WEIGHTS = {
    "inception": (
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        "FID's InceptionV3",
    ),
    "alexnet": ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "LPIPS' AlexNet backbone"),
}

# The first hex digits of each file's SHA-256: torch hub's naming convention, `<name>-<prefix>.pth`,
# which `torch.hub.download_url_to_file(..., hash_prefix=...)` checks.
# - alexnet: torchvision checks it on its own download (`alexnet(weights=...)` loads with
#   `get_state_dict(..., check_hash=True)`), so the prefix in the name is the publisher's digest.
# - inception: torch-fidelity loads its file with `load_state_dict_from_url(URL, progress=True)`,
#   without `check_hash`, so its own code never checks the suffix, and its converter
#   (utils/util_convert_inception_weights.py) writes `pt-inception-2015-12-05.pth`, no digest.
#   The released file is pytorch-fid's conversion (`pt_inception-2015-12-05-6726825d.pth`, the
#   same suffix; 566 entries, a torchvision Inception3 state dict, where torch-fidelity's converter
#   writes 472), named by the hub convention. Independent records of the file's full SHA-256
#   (6726825d0af5f729..., 95,628,359 bytes) begin with the suffix. We pin the 8 digits the name
#   carries, not the longer digest, which no publisher states. None here would mean "no digest
#   established": the file is then used with a warning.
SHA256_PREFIX: dict[str, str | None] = {"alexnet": "7be5be79", "inception": "6726825d"}

TRUST_ENV = "MMF_LIGHTNING_TRUST_WEIGHTS"
VERIFIED_RECORD = Path("~/.cache/mmf_lightning/verified-weights.json")
_verified: dict[tuple[str, int, int], str] = {}  # this process's memory of the record
_warned: set[str] = set()


class WeightsMissing(FileNotFoundError):
    pass


class WeightsMismatch(ValueError):
    """A weights file whose SHA-256 is not the pinned one."""


def hub_path(name: str) -> Path:
    """Where torch's hub cache keeps the file for ``name``."""
    url, _ = WEIGHTS[name]
    import torch  # (here: `download-weights --help` answers without it)

    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 16 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(16 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trusted_paths() -> set[Path]:
    """The files listed in ``$MMF_LIGHTNING_TRUST_WEIGHTS``: used without verification."""
    value = os.environ.get(TRUST_ENV, "")
    return {Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip()}


def _record_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _recorded_digest(key: tuple[str, int, int]) -> str | None:
    if key in _verified:
        return _verified[key]
    try:
        entry = json.loads(VERIFIED_RECORD.expanduser().read_text()).get(key[0])
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == key[1:]:
        _verified[key] = entry.get("sha256")
        return _verified[key]
    return None


def _remember(key: tuple[str, int, int], digest: str) -> None:
    _verified[key] = digest
    record = VERIFIED_RECORD.expanduser()
    try:
        with file_lock(record):
            try:
                entries = json.loads(record.read_text())
            except (OSError, ValueError):
                entries = {}
            entries = entries if isinstance(entries, dict) else {}
            entries[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": digest}
            with atomic_write(record) as tmp:
                tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    except OSError:  # a read-only home: verify again next run
        pass


def _mismatch(name: str, path: Path, digest: str, downloaded: bool = False) -> WeightsMismatch:
    url, what = WEIGHTS[name]
    expected = f"expected a SHA-256 starting with {SHA256_PREFIX[name]}, found {digest}"
    if downloaded:
        return WeightsMismatch(
            f"{what} weights downloaded from {url} for {path} fail verification: {expected}; the download was "
            "discarded: run `python -m mmf_lightning download-weights` again (a proxy or a moved release can "
            "serve another file)"
        )
    return WeightsMismatch(
        f"{what} weights {path} fail verification: {expected} (a truncated, corrupted or different file: "
        f"FID/LPIPS from it compare with nothing); delete it and run `python -m mmf_lightning download-weights` "
        f"(or download {url} again), or, to use this file deliberately, add its path to ${TRUST_ENV}"
    )


def verify(name: str, path: str | os.PathLike) -> Path:
    """``path`` if its SHA-256 starts with the pinned prefix for ``name`` (hashed once per path,
    size and mtime), or if it is listed in ``$MMF_LIGHTNING_TRUST_WEIGHTS`` (with a warning);
    else ``WeightsMismatch`` naming the file, the expected and the found digest."""
    path = Path(path)
    _, what = WEIGHTS[name]
    if path.resolve() in trusted_paths():
        if str(path) not in _warned:
            _warned.add(str(path))
            warnings.warn(
                f"{what} weights {path} are used WITHOUT digest verification (listed in ${TRUST_ENV}): metrics "
                "computed with them compare only with metrics from this same file, never with published numbers",
                UserWarning,
                stacklevel=2,
            )
        return path
    expected = SHA256_PREFIX.get(name)
    if expected is None:
        if str(path) not in _warned:
            _warned.add(str(path))
            warnings.warn(f"no digest is pinned for {what} weights: {path} is used unverified", stacklevel=2)
        return path
    key = _record_key(path)
    digest = _recorded_digest(key) or sha256_file(path)
    if not digest.startswith(expected):
        raise _mismatch(name, path, digest)
    if key not in _verified:
        _remember(key, digest)
    return path


def downloads_allowed() -> bool:
    """False when MMF_LIGHTNING_OFFLINE=1 (tests, air-gapped clusters): never touch the network."""
    return os.environ.get("MMF_LIGHTNING_OFFLINE", "0") != "1"


def resolve_weights(name: str, explicit: str | os.PathLike | None = None, allow_download: bool | None = None) -> Path:
    """The path of the verified weights for ``name``, fetching them into the hub cache if allowed."""
    url, what = WEIGHTS[name]
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsMissing(f"{what} weights not found at the configured path {path}")
        return verify(name, path)
    path = hub_path(name)
    if path.is_file():
        return verify(name, path)
    allow = downloads_allowed() if allow_download is None else allow_download
    if allow:
        try:
            return fetch(name, path.parent)
        except OSError as err:
            reason = f"fetching {url} failed ({err})"
    else:
        reason = "downloads are off (MMF_LIGHTNING_OFFLINE=1)"
    raise WeightsMissing(
        f"{what} weights {path.name} are missing: looked in the torch hub cache {path}; {reason}. Either run "
        f"`python -m mmf_lightning download-weights` on a machine with internet and copy {path.parent} to the same "
        f"place here (or point $TORCH_HOME at the copy), or download {url} yourself and set its path in the config "
        "(feature_extractor_weights_path / lpips_weights_path)"
    )


def fetch(name: str, directory: str | os.PathLike) -> Path:
    """Download the weights for ``name`` into ``directory`` and verify them before they take the
    file's name: one process downloads (a lock), under a temporary name of its own; a file that
    fails verification never lands (``WeightsMismatch``)."""
    url, _ = WEIGHTS[name]
    directory = Path(directory)
    target = directory / url.rsplit("/", 1)[-1]
    with file_lock(target):
        if target.is_file():  # fetched by another process meanwhile
            return verify(name, target)
        with atomic_write(target) as tmp:
            try:
                import torch

                torch.hub.download_url_to_file(url, str(tmp), progress=True)
            except Exception as err:  # URLError, HTTPError, timeouts
                raise OSError(f"could not download {url}: {err}") from err
            digest = sha256_file(tmp)
            expected = SHA256_PREFIX.get(name)
            if expected is not None and not digest.startswith(expected):
                raise _mismatch(name, target, digest, downloaded=True)
        if expected is not None:
            _remember(_record_key(target), digest)
    return target
