"""The resolved config of a CLI run: into the run's own folder, into every checkpoint (as plain
data), and into the W&B run.

LightningCLI's SaveConfigCallback writes ``config.yaml`` to ``trainer.log_dir``, which for W&B
is the shared ``save_dir``: a second run overwrote the first's. Here it goes to ``runs.run_dir``
(one folder per run for every logger), and each checkpoint carries it under ``"run_config"``
as YAML-safe data (dicts, lists, strings, numbers), so ``evaluate`` needs nothing beside a
checkpoint and the file still loads with ``torch.load(..., weights_only=True)``.
"""

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
            folder.mkdir(parents=True, exist_ok=True)
            path = str(folder / self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    self._to_wandb(logger, folder)
        self.already_saved = True

    def _to_wandb(self, logger, folder) -> None:
        """The whole resolved config into the W&B run, once, from rank 0 (the other ranks have no
        run); and a link ``<run folder>/wandb`` to W&B's own files of the run (metrics, media)."""
        from pathlib import Path

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
