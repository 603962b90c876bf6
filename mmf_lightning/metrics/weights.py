"""Pretrained weights the metrics need, found offline first.

FID's Inception (torch-fidelity's conversion of the TF 2015-12-05 graph) and LPIPS' AlexNet
backbone (torchvision's) are looked up, in order, at an explicit path from the config, then in
the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where ``download-weights`` and torch
itself put them). Missing, they are fetched once when allowed; when that fails the error names
the file and the two ways to provide it.
"""

import os
from pathlib import Path

import torch

WEIGHTS = {
    "inception": (
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        "FID's InceptionV3",
    ),
    "alexnet": ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "LPIPS' AlexNet backbone"),
}


class WeightsMissing(FileNotFoundError):
    pass


def hub_path(name: str) -> Path:
    """Where torch's hub cache keeps the file for ``name``."""
    url, _ = WEIGHTS[name]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def downloads_allowed() -> bool:
    """False when MMF_LIGHTNING_OFFLINE=1 (tests, air-gapped clusters): never touch the network."""
    return os.environ.get("MMF_LIGHTNING_OFFLINE", "0") != "1"


def resolve_weights(name: str, explicit: str | os.PathLike | None = None, allow_download: bool | None = None) -> Path:
    """The path of the weights for ``name``, fetching them into the hub cache if allowed."""
    url, what = WEIGHTS[name]
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsMissing(f"{what} weights not found at the configured path {path}")
        return path
    path = hub_path(name)
    if path.is_file():
        return path
    allow = downloads_allowed() if allow_download is None else allow_download
    if allow:
        try:
            fetch(name, path.parent)
            return path
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
    """Download the weights for ``name`` into ``directory`` (atomically: no half-written file)."""
    url, _ = WEIGHTS[name]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / url.rsplit("/", 1)[-1]
    tmp = target.with_suffix(".partial")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except Exception as err:  # URLError, HTTPError, timeouts
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not download {url}: {err}") from err
    tmp.replace(target)
    return target


def download_weights_main(argv: list[str]) -> list[Path]:
    """``python -m mmf_lightning download-weights [--dir DIR]``: stage every weights file the metrics
    use, for machines (cluster compute nodes) that have no internet."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mmf_lightning download-weights",
        description="Download the metrics' pretrained weights (FID's Inception, LPIPS' AlexNet) for offline use.",
    )
    parser.add_argument("--dir", help="target folder (default: the torch hub cache, $TORCH_HOME/hub/checkpoints)")
    parser.add_argument("--only", nargs="+", choices=sorted(WEIGHTS), help="some of the files (default: all)")
    args = parser.parse_args(argv)
    directory = Path(args.dir).expanduser() if args.dir else hub_path("inception").parent
    paths, failed = [], []
    for name in args.only or sorted(WEIGHTS):
        url, what = WEIGHTS[name]
        target = directory / url.rsplit("/", 1)[-1]
        if target.is_file():
            print(f"{what}: present, {target}")
        elif not downloads_allowed():
            failed.append(f"{what}: missing at {target}, and downloads are off (MMF_LIGHTNING_OFFLINE=1)")
            continue
        else:
            try:
                fetch(name, directory)
                print(f"{what}: downloaded to {target}")
            except OSError as err:
                failed.append(f"{what}: {err}")
                continue
        paths.append(target)
    if failed:
        raise SystemExit("download-weights could not stage everything:\n  " + "\n  ".join(failed))
    print(
        f"all weights in {directory}. On a machine without internet, copy this folder to the same place there, or "
        "set $TORCH_HOME to a folder whose hub/checkpoints holds these files, or name each file in the config "
        "(feature_extractor_weights_path / --lpips_weights_path)."
    )
    return paths
