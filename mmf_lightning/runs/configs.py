"""A run's config, and what it builds: the config a checkpoint carries (or the ``config.yaml`` beside it), a config
file with its includes resolved, the ``data:`` section with ``--data.KEY=VALUE`` overrides, and the run's datamodule
and FID callback."""

import json
from pathlib import Path

import yaml

DATA_OVERRIDE = "--data."


def run_config(ckpt: Path, explicit: str | None) -> tuple[dict, str]:
    """(the run config of ``ckpt``, where it came from): ``explicit`` (``--config``) when given,
    else the config the checkpoint carries (``callbacks.RunConfig``), else, for checkpoints
    written before they carried one, the ``config.yaml`` beside the run's ``checkpoints/``."""
    from mmf_lightning.runs.run_config import RUN_CONFIG_KEY
    from mmf_lightning.training.checkpoints import read_checkpoint

    if explicit:
        return config_file(Path(explicit)), str(explicit)
    stored = read_checkpoint(ckpt).get(RUN_CONFIG_KEY)
    if isinstance(stored, dict):
        return stored, f"{ckpt} (the run config it carries)"
    path = ckpt.parent.parent / "config.yaml"
    if ckpt.parent.name == "checkpoints" and path.is_file():
        return config_file(path), str(path)
    raise FileNotFoundError(
        f"no run config for {ckpt}: the checkpoint carries none and there is no config.yaml beside its folder; "
        "pass --config with the run's config.yaml"
    )


def config_file(path: Path) -> dict:
    """A config YAML file as a dict, its includes read in as ``fit`` reads them: a value that names a YAML file
    (``fid: ../presets/fid_digits.yaml`` in configs/) is that file's contents, resolved against the folder of the file
    that names it, at any depth."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path} does not exist; pass a run's config.yaml or a file of configs/")
    check_includes(path)
    config = _with_includes(yaml.safe_load(path.read_text()) or {}, path.parent)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a config (a YAML mapping with a `data:` section)")
    return config


def _with_includes(node, folder: Path):
    if isinstance(node, dict):
        return {k: _with_includes(v, folder) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_includes(v, folder) for v in node]
    if isinstance(node, str) and node.endswith((".yaml", ".yml")) and (folder / node).is_file():
        included = folder / node
        return _with_includes(yaml.safe_load(included.read_text()), included.parent)
    return node


def data_section(base: str | dict, overrides: list[str]) -> dict:
    """The ``data:`` section {class_path, init_args} given by ``base`` (a YAML file of the section
    or of a whole config with one, a class path, or a section as a dict) with the
    ``--data.KEY=VALUE`` ``overrides`` applied, jsonargparse-style."""
    import lightning as L
    from jsonargparse import ArgumentParser

    if isinstance(base, str) and base.endswith((".yaml", ".yml")) and Path(base).is_file():
        loaded = yaml.safe_load(Path(base).read_text())
        if isinstance(loaded, dict) and "class_path" not in loaded and "data" in loaded:  # a whole config
            base = config_file(Path(base))["data"]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    value = base if isinstance(base, str) else json.dumps(base)
    section = parser.parse_args(["--data", value, *overrides]).data.as_dict()
    section.pop("__path__", None)
    return section


def data_overrides(rest: list[str]) -> tuple[list[str], list[str]]:
    """Split the arguments argparse did not know into ``--data.KEY=VALUE`` overrides and the rest."""
    overrides = [a for a in rest if a.startswith(DATA_OVERRIDE) and "=" in a]
    return overrides, [a for a in rest if a not in overrides]


def describe_data(section: dict) -> str:
    """``Class(key=value, ...)`` without the loader settings, for the report."""
    loader = {"batch_size", "num_workers", "persistent_workers", "pin_memory"}
    args = section.get("init_args") or {}
    inner = ", ".join(f"{k}={v}" for k, v in args.items() if k not in loader)
    return f"{str(section.get('class_path', '?')).rsplit('.', 1)[-1]}({inner})"


def reference_name(datamodule, split: str) -> str:
    """The FID reference set, for the report: the DataModule's ``reference_name(split)`` (a shifted
    set names its kind and severity), else its class and split."""
    name = getattr(datamodule, "reference_name", None)
    return name(split) if callable(name) else f"{type(datamodule).__name__}, {split} split"


def check_data(module, datamodule, ckpt: Path, data_from: str) -> str | None:
    """Why ``module`` cannot be evaluated on ``datamodule``, or None."""
    shape = getattr(datamodule, "data_shape", None)
    if shape is not None and tuple(shape) != tuple(module.data_shape):
        return (
            f"checkpoint {ckpt} has a network for data of shape {tuple(module.data_shape)} but the data of "
            f"{data_from} ({type(datamodule).__name__}) has shape {tuple(shape)}; evaluate it on data of the task it "
            "was trained on (--config, --data)"
        )
    return None


def instantiate_run(config: dict, with_fid: bool, fid_num_samples: int | None, fid_at_most: int | None = None):
    """The run's datamodule and (when configured and asked for) its FID callback, with
    ``fid_num_samples`` samples, else the run's own count capped at ``fid_at_most``."""
    import lightning as L
    from jsonargparse import ArgumentParser

    from mmf_lightning.callbacks import FID

    if "data" not in config:
        raise ValueError("the run config has no `data` section")
    fid_config = config.get("fid") if with_fid else None
    if fid_config is not None and (fid_num_samples is not None or fid_at_most is not None):
        init_args = fid_config.get("init_args", {})
        if fid_num_samples is None:
            fid_num_samples = min(init_args.get("num_samples", 50_000), fid_at_most)
        fid_config = {**fid_config, "init_args": {**init_args, "num_samples": fid_num_samples}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    parser.add_subclass_arguments(FID, "fid", required=False)
    objects = parser.instantiate(parser.parse_object({"data": config["data"], "fid": fid_config}))
    return objects.data, objects.fid


def run_uses_lpips(config: dict) -> bool:
    """Whether the run validated with LPIPS: its PathMetrics callback's ``lpips`` (True when the run
    had no PathMetrics)."""
    trainer = config.get("trainer")
    callbacks = (trainer.get("callbacks") if isinstance(trainer, dict) else None) or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("PathMetrics"):
            return bool((cb.get("init_args") or {}).get("lpips", True))
    return True


def check_includes(path: str | Path) -> None:
    """A ValueError naming the first file a config includes (a value such as ``data: ../presets/x.yaml``, resolved
    against the config's folder, as jsonargparse resolves it) that does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path} does not exist")
    for value in _strings(yaml.safe_load(path.read_text())):
        if value.endswith((".yaml", ".yml")) and not (path.parent / value).is_file():
            raise FileNotFoundError(
                f"{path} includes {value}, which does not exist (looked for {(path.parent / value).resolve()}); "
                "fix the path in the config"
            )


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node
