"""A run's folder: its resolved config, samples, metrics and checkpoints, whatever the logger.

The folder is ``<save_dir>/<name>/<version>``, the one Lightning's ModelCheckpoint puts its
``checkpoints/`` in: for CSVLogger and TensorBoardLogger their ``log_dir``
(``<save_dir>/<name>/version_<n>``), for WandbLogger ``<save_dir>/<project>/<run id>``, and
``default_root_dir`` without a logger. Two runs never share one, so two W&B runs in one
``save_dir`` (a sweep) keep their configs and pictures apart.
"""

import csv
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

# -- reading runs back: a folder of runs (a sweep's output) for the figures of `plots` ------------

CONFIG_FILE = "config.yaml"
# config keys that differ between runs without telling them apart as experiments
NOT_A_FACET = ("trainer.logger", "trainer.default_root_dir", "trainer.callbacks", "ckpt_path", "config")


@dataclass
class Run:
    """One run folder: ``folder/config.yaml`` (written by ``callbacks.RunConfig``), its metrics
    (``metrics.csv`` of CSVLogger, or the W&B run file behind ``folder/wandb``) and
    ``folder/checkpoints/*.ckpt``. ``facets``: what sets it apart from the other runs it was read
    with (``find_runs``), e.g. {"lambda": "λ=0.5", "tangent": "instantaneous"}; ``label`` joins them."""

    folder: Path
    config: dict
    facets: dict[str, str] = field(default_factory=dict)
    _modules: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def label(self) -> str:
        return " · ".join(self.facets.values()) or self.folder.name

    def label_without(self, facet: str) -> str:
        return " · ".join(v for k, v in self.facets.items() if k != facet) or self.folder.name

    def checkpoint(self, name: str = "last") -> Path:
        """``checkpoints/<name>.ckpt``; ``name="last"`` falls back to the newest checkpoint."""
        folder = self.folder / "checkpoints"
        path = folder / f"{name}.ckpt"
        if path.is_file():
            return path
        found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if name == "last" else []
        if not found:
            raise FileNotFoundError(
                f"run {self.folder} has no checkpoint {path}; train it, or pass another --checkpoint"
            )
        return found[-1]

    def load_module(self, name: str = "last"):
        """The trained MeanFlowModule (``MeanFlowModule.load_from_checkpoint``, on the CPU, eval mode;
        read once per run)."""
        from mmf_lightning.training.module import MeanFlowModule

        if name not in self._modules:
            path = self.checkpoint(name)
            self._modules[name] = MeanFlowModule.load_from_checkpoint(path, map_location="cpu").eval()
        return self._modules[name]

    def datamodule(self):
        """The run's datamodule, built from its config (nothing is loaded until asked)."""
        from mmf_lightning.runs.configs import instantiate_run

        return instantiate_run(self.config, with_fid=False, fid_num_samples=None)[0]

    @cached_property
    def metrics(self) -> dict[str, tuple[list[int], list[float]]]:
        """Every logged scalar: name -> (steps, values), in step order. From ``metrics.csv``, else
        the W&B run file, else TensorBoard's event files; {} when the run logged none."""
        rows = []
        if (self.folder / "metrics.csv").is_file():
            with open(self.folder / "metrics.csv", newline="") as f:
                rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
        elif (wandb_folder := wandb_run_folder(self.folder)) is not None:
            from mmf_lightning.runs.wandb_files import read_run

            rows = [{**r, "step": r.get("trainer/global_step", r.get("_step"))} for r in read_run(wandb_folder).history]
        elif has_tensorboard_events(self.folder):  # TensorBoardLogger (needs tensorboard installed)
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            events = EventAccumulator(str(self.folder), size_guidance={"scalars": 0})
            events.Reload()
            rows = [{"step": e.step, tag: e.value} for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
        series: dict[str, dict[int, float]] = {}
        for row in rows:  # a step logged twice (before a crash, and after the resume): the later row
            step = row.get("step")
            for key, value in row.items():
                if key not in ("step", "epoch", "_step", "_runtime", "_timestamp", "trainer/global_step"):
                    if step is not None and isinstance(value, int | float) and math.isfinite(value):
                        series.setdefault(key, {})[int(step)] = float(value)
        return {k: tuple(map(list, zip(*sorted(v.items())))) for k, v in series.items()}

    def final(self, key: str) -> float | None:
        """The last logged value of a metric, None if never logged."""
        series = self.metrics.get(key)
        return series[1][-1] if series else None


def wandb_run_folder(folder: Path) -> Path | None:
    """W&B's own folder of a run (``<run folder>/wandb``, or the path in ``wandb.txt``), if any."""
    link = folder / "wandb"
    if not link.exists() and (folder / "wandb.txt").is_file():
        link = Path((folder / "wandb.txt").read_text().strip())
    return link if link.is_dir() else None


def has_tensorboard_events(folder: Path) -> bool:
    return any(folder.glob("events.out.tfevents.*"))


def find_runs(folder: str | Path) -> list[Run]:
    """The runs under ``folder`` (itself one, or any depth of subfolders: a sweep's output), each a
    folder with ``config.yaml``, in path order, with the facets that tell them apart."""
    import yaml

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"runs folder {folder} does not exist")
    paths = sorted(p.parent for p in folder.rglob(CONFIG_FILE) if (p.parent / "checkpoints").is_dir() or
                   (p.parent / "metrics.csv").is_file() or wandb_run_folder(p.parent) is not None or
                   has_tensorboard_events(p.parent))  # fmt: skip
    if not paths:
        raise FileNotFoundError(
            f"no runs under {folder}: a run is a folder with {CONFIG_FILE} and checkpoints/ or metrics "
            "(what `python -m mmf_lightning fit` leaves in <save_dir>/<name>/<version>)"
        )
    runs = [Run(p, yaml.safe_load((p / CONFIG_FILE).read_text()) or {}) for p in paths]
    name_facets(runs)
    return runs


def name_facets(runs: list[Run]) -> None:
    """Set each run's facets: the config values that differ between the runs, in words."""
    flat = [_flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    differ = [k for k in differ if not k.startswith(NOT_A_FACET)]
    # a component whose class differs is one facet: its arguments differ because of it
    switched = [k.removesuffix("class_path") for k in differ if k.endswith("class_path") and k != "class_path"]
    differ = [k for k in differ if not any(k.startswith(p) and k != p + "class_path" for p in switched)]
    for run in runs:
        facets = {}
        for key in differ:
            name, value = _facet(key, run.config)
            if name not in facets and value not in facets.values():
                facets[name] = value
        if not facets and _get(run.config, "lambda_schedule.schedule") is not None:  # alone, or all alike
            facets["lambda"] = describe_schedule(_get(run.config, "lambda_schedule.schedule"))
        run.facets = facets
    if len({r.label for r in runs}) < len(runs):  # the same config twice (e.g. two seeds of one setting)
        for run in runs:
            run.facets["run"] = run.folder.name


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _facet(key: str, config: dict) -> tuple[str, str]:
    """(facet name, words) for a config key whose value tells runs apart."""
    if key.startswith("lambda_schedule.schedule"):
        return "lambda", describe_schedule(_get(config, "lambda_schedule.schedule"))
    if key == "data.class_path":
        return "data", describe_data_facet(_get(config, "data"))
    if key.endswith("class_path"):
        return key, str(_get(config, key)).rsplit(".", 1)[-1]
    if key == "data.init_args.subset_fraction":
        return "data", f"{100 * float(_get(config, key)):g}% data"
    if key == "model.objective.init_args.tangent":
        return "tangent", f"{_get(config, key)} tangent"
    if key in ("data.init_args.system", "data.init_args.distribution", "data.init_args.kind"):
        return "data", describe_data_facet(_get(config, "data"))
    return key, f"{key.rsplit('.', 1)[-1]}={_get(config, key)}"


def describe_schedule(schedule) -> str:
    """A lambda schedule's config in words: "λ=0.5", "curriculum (linear, 1000 steps)", ..."""
    if not isinstance(schedule, dict):
        return str(schedule)
    kind, args = str(schedule.get("class_path", "")).rsplit(".", 1)[-1], schedule.get("init_args") or {}
    if kind == "Constant":
        return f"λ={args.get('value', 0.0):g}"
    if kind in ("LinearWarmup", "CosineWarmup"):
        shape = "linear" if kind == "LinearWarmup" else "cosine"
        return f"curriculum ({shape}, {args.get('warmup_steps')} steps)"
    if kind == "Step":
        return f"curriculum (step at {args.get('milestones')})"
    return kind


def describe_data_facet(data) -> str:
    if not isinstance(data, dict):
        return str(data)
    kind = str(data.get("class_path", "")).rsplit(".", 1)[-1]
    args = data.get("init_args") or {}
    detail = args.get("system") or args.get("distribution") or args.get("kind")
    return f"{kind} {detail}" if detail else kind


def find_evaluations(runs: list[Run], folders) -> dict[Path, dict[str, dict[str, float]]]:
    """The results of ``evaluate`` for these runs, from every ``evaluation.json`` under ``folders``:
    run folder -> {evaluation set -> metrics}. The set is the ``--data`` file's stem, or "own data"
    (the run's own validation data). A checkpoint is matched to its run by its resolved path, or,
    when the JSON was written elsewhere, by its last four path parts (``<name>/<version>/checkpoints/x.ckpt``)."""
    by_path = {r.folder.resolve(): r.folder for r in runs}
    by_tail = {r.folder.parts[-2:]: r.folder for r in runs}
    found: dict[Path, dict[str, dict[str, float]]] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("evaluation.json")):
            for record in json.loads(path.read_text()).get("runs", {}).values():
                ckpt = Path(record["checkpoint"])
                run = by_path.get(ckpt.resolve().parent.parent) or by_tail.get(ckpt.parts[-4:-2])
                if run is None:
                    continue
                source = str(record.get("from", ""))
                name = Path(source.split()[1]).stem if source.startswith("--data ") else "own data"
                found.setdefault(run, {})[name] = record["metrics"]
    return found


def checkpoints_in(path: str | Path) -> list[Path]:
    """What a user may pass where a checkpoint goes: a checkpoint file (itself), a run folder (its
    ``checkpoints/last.ckpt``, else its newest checkpoint) or a folder of runs (each run's, in path order). A
    FileNotFoundError says which of them ``path`` is not."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a checkpoint, a run folder or a folder of runs"
        )
    folders = [path] if (path / "checkpoints").is_dir() else sorted(c.parent for c in path.rglob("checkpoints"))
    found = []
    for folder in folders:
        ckpts = sorted((folder / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        last = folder / "checkpoints" / "last.ckpt"
        if last.is_file() or ckpts:
            found.append(last if last.is_file() else ckpts[-1])
    if not found:
        raise FileNotFoundError(
            f"{path} is a folder with no checkpoint of a run under it (no checkpoints/*.ckpt); pass a checkpoint, "
            "a run folder or a folder of runs"
        )
    return found
