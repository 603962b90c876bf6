"""The resolved config of a CLI run: into the run's own folder, into every checkpoint (as plain
data), and into the W&B run.

LightningCLI's SaveConfigCallback writes ``config.yaml`` to ``trainer.log_dir``, which for W&B
is the shared ``save_dir``: a second run overwrote the first's. Here it goes to ``runs.run_dir``
(one folder per run for every logger), and each checkpoint carries it under ``"run_config"``
as YAML-safe data (dicts, lists, strings, numbers), so ``evaluate`` needs nothing beside a
checkpoint and the file still loads with ``torch.load(..., weights_only=True)``.
"""

from pathlib import Path

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from mmf_lightning.training.run_dir import run_dir

RUN_CONFIG_KEY = "run_config"


class RunConfig(SaveConfigCallback):
    """LightningCLI's ``save_config_callback``: see the module docstring."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        import yaml

        # every rank keeps the plain config: each calls on_save_checkpoint
        self.plain = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        folder = run_dir(trainer)  # a collective: on every rank
        if trainer.is_global_zero:
            self._folder = folder
            folder.mkdir(parents=True, exist_ok=True)
            path = str(folder / self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    self._to_wandb(logger, folder)
        self.already_saved = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A fit that stops before its first optimizer step leaves no run folder behind (a folder of a config and
        nothing else would pass for a run): its config goes, and the folders above it that are left empty, up to
        ``default_root_dir``; a folder that holds anything else stays."""
        folder = getattr(self, "_folder", None)
        if folder is None or trainer.global_step > 0 or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        for name in (self.config_filename, "wandb", "wandb.txt"):
            path = folder / name
            if path.is_symlink() or path.is_file():
                path.unlink()
        root = Path(trainer.default_root_dir).resolve()
        for made in (folder, *folder.parents):
            if made.resolve() == root:
                break
            try:
                made.rmdir()  # only while empty: anything else written there stays
            except OSError:
                break

    def _to_wandb(self, logger, folder) -> None:
        """The whole resolved config into the W&B run, once, from rank 0 (the other ranks have no
        run); and a link ``<run folder>/wandb`` to W&B's own files of the run (metrics, media)."""
        logger.experiment.config.update(self.plain, allow_val_change=True)
        link, target = folder / "wandb", Path(logger.experiment.dir).resolve().parent
        if not link.exists():
            try:
                link.symlink_to(target, target_is_directory=True)
            except OSError:  # no symlinks here (some Windows setups): say where the files are
                (folder / "wandb.txt").write_text(f"{target}\n")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        plain = getattr(self, "plain", None)
        if plain is not None:
            checkpoint[RUN_CONFIG_KEY] = plain
