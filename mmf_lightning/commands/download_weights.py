"""``python -m mmf_lightning download-weights``: stage the metrics' pretrained weights for offline machines."""

from pathlib import Path

from mmf_lightning.commands import CommandParser
from mmf_lightning.metrics.weights import WEIGHTS, WeightsMismatch, downloads_allowed, fetch, hub_path, verify


def download_weights_main(argv: list[str]) -> list[Path]:
    """``python -m mmf_lightning download-weights [--dir DIR]``: stage every weights file the metrics
    use, for machines (cluster compute nodes) that have no internet."""

    parser = CommandParser(
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
            try:
                verify(name, target)
            except WeightsMismatch as err:
                failed.append(f"{what}: {err}")
                continue
            print(f"{what}: present, {target}")
        elif not downloads_allowed():
            failed.append(f"{what}: missing at {target}, and downloads are off (MMF_LIGHTNING_OFFLINE=1)")
            continue
        else:
            try:
                fetch(name, directory)
                print(f"{what}: downloaded to {target}")
            except (OSError, WeightsMismatch) as err:
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
