"""``python -m mmf_lightning {fit,validate,test,predict} --config X.yaml``: LightningCLI with the package's two
top-level groups (``lambda_schedule``, ``fid``), run folders named after their config, and checkpoints read safely."""

import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from mmf_lightning.callbacks import FID, LambdaScheduler, SampleFigures
from mmf_lightning.commands import COMMANDS
from mmf_lightning.runs.run_config import RunConfig
from mmf_lightning.training.module import MeanFlowModule


class MMFLightningCLI(LightningCLI):
    """LightningCLI with two top-level groups: ``lambda_schedule``, the LambdaScheduler callback
    that every run gets (default: the paper's curriculum, T_warmup = 100k), and ``fid``, the FID
    callback, off unless configured."""

    def __init__(self, args=None, run: bool = True):
        super().__init__(
            MeanFlowModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=RunConfig,
            parser_kwargs={
                "prog": "python -m mmf_lightning",
                "description": "Train, sample and evaluate one-step generators (Modular MeanFlow and relatives).",
            },
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def _add_subcommands(self, parser, **kwargs) -> None:
        """Lightning's fit / validate / test / predict, and in ``--help`` the package's own
        commands (run by ``main`` before LightningCLI sees them) with one line each."""
        from jsonargparse import ArgumentParser

        super()._add_subcommands(parser, **kwargs)
        for name, (_, _, line) in COMMANDS.items():
            parser._subcommands_action.add_subcommand(
                name, ArgumentParser(description=f"{line} See `python -m mmf_lightning {name} --help`."), help=line
            )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(LambdaScheduler, "lambda_schedule")
        parser.add_subclass_arguments(FID, "fid", required=False, help="FID in validation; off unless configured")

    def instantiate_trainer(self, **kwargs):
        from mmf_lightning.callbacks.preemption import SaveOnPreemption

        trainer = super().instantiate_trainer(**kwargs)
        fid = self._get(self.config_init, "fid")
        if fid is not None:
            trainer.callbacks.append(fid)
        if not any(isinstance(cb, SaveOnPreemption) for cb in trainer.callbacks):
            trainer.callbacks.append(SaveOnPreemption())  # SIGTERM saves last.ckpt and exits cleanly
        if type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO":  # (a user's own plugin stays)
            from mmf_lightning.training.checkpoints import AtomicCheckpointIO

            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # a crash mid-save keeps the previous file
        return trainer

    def parse_arguments(self, parser, args) -> None:
        """Parses, and reads a ``--ckpt_path`` file safely (``weights_only``) before anything else
        does, so a truncated or foreign file stops the command with its name."""
        from mmf_lightning.training.checkpoints import read_checkpoint

        self._command_line = [a for a in (sys.argv[1:] if args is None else args) if isinstance(a, str)]
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt is not None and str(ckpt) not in ("last", "best", "hpc", "registry"):
            read_checkpoint(ckpt)

    def _given(self, *keys: str) -> bool:
        """Whether the command line sets one of ``keys`` (``--key=value`` or ``--key value``)."""
        return any(a.split("=", 1)[0] in {f"--{k}" for k in keys} for a in getattr(self, "_command_line", []))

    def before_instantiate_classes(self) -> None:
        """Where the run goes and what it is called, for every logger:

        - ``--trainer.default_root_dir`` on the command line moves the whole run (the logger's
          ``save_dir`` follows it unless the command line also sets that);
        - the run is named after its config file (``configs/ode/lambda0.yaml`` -> ``ode/lambda0``)
          unless the logger was given a name; a W&B run also gets the config's folders as tags and
          the project ``mmf-lightning`` unless given, and its ``save_dir`` is made absolute.
        """
        cfg = self.config[self.config.subcommand] if "subcommand" in self.config else self.config
        trainer = cfg.get("trainer", {})
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            args = getattr(logger, "init_args", None)
            if args is None:
                continue
            if self._given("trainer.default_root_dir") and not self._given(
                "trainer.logger.save_dir", "trainer.logger.init_args.save_dir"
            ):
                args.save_dir = trainer.get("default_root_dir")
            self._name_after_config(logger, cfg.get("config") or [])

    @staticmethod
    def _name_after_config(logger, configs) -> None:
        args = logger.init_args
        parts = config_parts(configs[-1]) if configs else ()
        if parts and args.get("name", "") in (None, "lightning_logs"):
            args.name = "/".join(parts)
        if str(logger.class_path).endswith("WandbLogger"):
            # W&B's service process, shared by every run of this Python process, writes the run file
            # and resolves a relative folder against its own working directory, the one it started in
            args.save_dir = os.path.abspath(args.get("save_dir") or ".")
            if args.get("project") is None:
                args.project = "mmf-lightning"
            if args.get("tags") is None and parts:
                args.tags = list(parts)

    def before_fit(self) -> None:
        """Spawn-based strategies pickle the trainer for the new processes: a callback holding a
        closure (Lightning's own EMAWeightAveraging) fails there, after the setup. Say it now."""
        import pickle

        start_method = getattr(self.trainer.strategy, "_start_method", None)
        if start_method not in ("spawn", "forkserver"):
            return
        for cb in self.trainer.callbacks:
            try:
                pickle.dumps(cb)
            except (pickle.PicklingError, AttributeError, TypeError) as err:
                hint = (
                    "; use mmf_lightning.callbacks.EMAWeightAveraging (the same EMA, picklable)"
                    if "WeightAveraging" in type(cb).__name__
                    else ""
                )
                raise ValueError(
                    f"trainer.strategy with start method {start_method!r} must pickle every callback, and "
                    f"{type(cb).__module__}.{type(cb).__name__} cannot be ({err}){hint}, or use strategy=ddp"
                ) from None

    def after_fit(self) -> None:
        """Say where the run left its checkpoint and pictures."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and (ckpt.last_model_path or ckpt.best_model_path):
            print(f"checkpoint: {ckpt.last_model_path or ckpt.best_model_path}")
        for cb in trainer.callbacks:
            if isinstance(cb, SampleFigures) and cb.last_path is not None:
                print(f"samples:    {cb.last_path}")


def config_parts(config) -> tuple[str, ...]:
    """A config file's path below ``configs/`` without the suffix: ``("ode", "lambda0")``."""
    path = Path(str(config)).with_suffix("")
    return path.parts[path.parts.index("configs") + 1 :] if "configs" in path.parts else (path.name,)
