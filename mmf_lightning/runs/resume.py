"""Resuming a run: ``--ckpt_path last`` finds the newest ``last.ckpt`` of the config's run folders and continues in
that folder; a checkpoint whose network or objective differ from the config's is refused, naming each key."""

import json
from pathlib import Path

# the model settings a checkpoint fixes: resuming with other values would silently train another model
FIXED_BY_CHECKPOINT = ("net", "objective")


def _loggers(trainer_cfg) -> list:
    loggers = trainer_cfg.get("logger")
    return loggers if isinstance(loggers, list) else [loggers]


def _version_value(folder: str):
    """``version_3`` -> 3 (CSV and TensorBoard name their folders so); any other name (a W&B run id) as it is."""
    number = folder.removeprefix("version_")
    return int(number) if folder.startswith("version_") and number.isdigit() else folder


def checkpoint_folders(cfg) -> tuple[str, list[Path]]:
    """(where this config's runs keep checkpoints, as a glob for messages; their ``last.ckpt`` files, newest last)."""
    trainer = cfg.get("trainer", {})
    root = Path(trainer.get("default_root_dir") or ".")
    logger = _loggers(trainer)[0]
    args = getattr(logger, "init_args", None) if logger not in (None, False, True) else None
    if logger in (None, False):
        pattern = root / "checkpoints"
        files = [pattern / "last.ckpt"]
    else:
        save_dir = Path(args.get("save_dir") or root) if args is not None else root
        name = (args.get("project") if "WandbLogger" in str(logger.class_path) else args.get("name")) if args else None
        folder = save_dir / str(name or "lightning_logs")
        version = args.get("version") if args is not None else None
        if version is not None and version != "":
            version = version if isinstance(version, str) else f"version_{version}"
            pattern = folder / version / "checkpoints"
            files = [pattern / "last.ckpt"]
        else:
            pattern = folder / "*" / "checkpoints"
            files = list(folder.glob("*/checkpoints/last.ckpt"))
    found = sorted((f for f in files if f.is_file()), key=lambda f: f.stat().st_mtime)
    return str(pattern / "last.ckpt"), found


def resolve_last(cfg) -> Path:
    """``--ckpt_path last``: the newest ``last.ckpt`` of this config's runs (same save_dir and name), with the logger
    pinned to its folder so the run continues there; a ValueError naming where it looked when there is none."""
    where, found = checkpoint_folders(cfg)
    if not found:
        raise ValueError(
            f"--ckpt_path last: no last.ckpt at {where}; train this config first (with the same "
            "--trainer.default_root_dir or logger save_dir and name), or pass a checkpoint's path"
        )
    last = found[-1]
    logger = _loggers(cfg.get("trainer", {}))[0]
    args = getattr(logger, "init_args", None) if logger not in (None, False, True) else None
    if args is not None:
        args.version = _version_value(last.parents[1].name)
    return last


def model_differences(model_cfg, hparams: dict) -> list[str]:
    """``model.<key>: checkpoint <a>, config <b>`` for each network or objective setting in which the config differs
    from the checkpoint's hyperparameters (keys the checkpoint does not record are not compared)."""
    config = model_cfg.as_dict() if hasattr(model_cfg, "as_dict") else dict(model_cfg)
    differences = []
    for key in FIXED_BY_CHECKPOINT:
        if key not in hparams or not isinstance(hparams[key], dict):
            continue
        ours, theirs = _flat(config.get(key), f"model.{key}"), _flat(hparams[key], f"model.{key}")
        for name in sorted(set(ours) | set(theirs)):
            if name in theirs and _json(ours.get(name)) != _json(theirs[name]):
                differences.append(f"{name}: checkpoint {theirs[name]!r}, config {ours.get(name)!r}")
    return differences


def _flat(value, prefix: str) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k != "__path__":
                out |= _flat(v, f"{prefix}.{k}")
        return out
    return {prefix: value}


def _json(value) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True, default=str)
