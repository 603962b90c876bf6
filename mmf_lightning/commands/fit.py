"""``python -m mmf_lightning {fit,validate,test,predict} --config X.yaml``: LightningCLI with the package's two
top-level groups (``lambda_schedule``, ``fid``), run folders named after their config, and checkpoints read safely."""

import os
import sys
from argparse import ArgumentError
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from mmf_lightning.callbacks import FID, LambdaScheduler, SampleFigures
from mmf_lightning.commands import COMMANDS, TRACEBACK_ENV, one_line_error
from mmf_lightning.runs.run_config import RunConfig
from mmf_lightning.training.module import MeanFlowModule

STRICT = {"exit_on_error": False, "allow_abbrev": False}


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
            # errors raise (``commands.main`` turns them into one line, without the usage), and an option is
            # never taken as the abbreviation of another (--trainer.max_step is not --trainer.max_steps)
            parser_kwargs={
                "prog": "python -m mmf_lightning",
                "description": "Train, sample and evaluate one-step generators (Modular MeanFlow and relatives).",
                **STRICT,
                **{name: dict(STRICT) for name in LightningCLI.subcommands()},
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
            # SIGTERM and Ctrl-C save last.ckpt and exit cleanly; every resumable stop prints this command
            trainer.callbacks.append(SaveOnPreemption(self.resume_command()))
        quiet_progress_bar(trainer)
        if type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO":  # (a user's own plugin stays)
            from mmf_lightning.training.checkpoints import AtomicCheckpointIO

            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # a crash mid-save keeps the previous file
        return trainer

    def parse_arguments(self, parser, args) -> None:
        """Parses, names the run's folder (``place_run``), and then checks ``--ckpt_path`` before Lightning reads
        it: ``last`` becomes the newest ``last.ckpt`` of this config's runs, in whose folder the run continues; the
        file is read safely (``weights_only``: a truncated or foreign file stops the command with its name); and a
        checkpoint of another network or objective than the config's is refused, naming each setting."""
        from mmf_lightning.runs.configs import check_includes
        from mmf_lightning.runs.resume import model_differences, resolve_last
        from mmf_lightning.training.checkpoints import read_checkpoint

        self._command_line = [a for a in (sys.argv[1:] if args is None else args) if isinstance(a, str)]
        for config in config_files(self._command_line):
            check_includes(config)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:  # jsonargparse's, raised (exit_on_error=False): one line instead of the usage
            if os.environ.get(TRACEBACK_ENV, "0") == "1":
                raise
            command = (
                self._command_line[0]
                if self._command_line[:1] and self._command_line[0] in self.subcommands()
                else None
            )
            print(f"error: {one_line_error(err, command)}", file=sys.stderr)
            raise SystemExit(2) from None
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else self.config
        self.place_run(cfg)
        if not subcommand:
            return
        if cfg.get("ckpt_path") == "last":
            cfg.ckpt_path = str(resolve_last(cfg))
            print(f"--ckpt_path last: resuming from {cfg.ckpt_path}", file=sys.stderr)
        ckpt = cfg.get("ckpt_path")
        if ckpt is None or str(ckpt) in ("best", "hpc", "registry"):
            return
        differences = model_differences(cfg.get("model"), read_checkpoint(ckpt).get("hyper_parameters", {}))
        if differences:
            raise ValueError(
                f"--ckpt_path {ckpt} is a checkpoint of another model than the config's: {'; '.join(differences)}. "
                f"To resume, give the config the checkpoint was trained with; to fine-tune its weights with this "
                f"config, pass --model.init_from={ckpt} instead of --ckpt_path"
            )

    def resume_command(self) -> str | None:
        """The command that resumes this run: the same one, with ``--ckpt_path last`` (None for no ``fit``)."""
        import shlex

        line = getattr(self, "_command_line", [])
        if not line or line[0] != "fit":
            return None
        kept, skip = [], False
        for arg in line:
            if skip:
                skip = False
            elif arg == "--ckpt_path":
                skip = True
            elif not arg.startswith("--ckpt_path="):
                kept.append(arg)
        return shlex.join(["python", "-m", "mmf_lightning", *kept, "--ckpt_path", "last"])

    def _given(self, *keys: str) -> bool:
        """Whether the command line sets one of ``keys`` (``--key=value`` or ``--key value``)."""
        return any(a.split("=", 1)[0] in {f"--{k}" for k in keys} for a in getattr(self, "_command_line", []))

    def place_run(self, cfg) -> None:
        """Where the run goes and what it is called, for every logger:

        - ``--trainer.default_root_dir`` on the command line moves the whole run (the logger's
          ``save_dir`` follows it unless the command line also sets that);
        - the run is named after its config file (``configs/ode/lambda0.yaml`` -> ``ode/lambda0``)
          unless the logger was given a name; a W&B run also gets the config's folders as tags and
          the project ``mmf-lightning`` unless given, and its ``save_dir`` is made absolute.
        """
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


def config_files(command_line: list[str]) -> list[str]:
    """The files of ``--config`` / ``-c`` on a command line."""
    files = []
    for i, arg in enumerate(command_line):
        if arg in ("--config", "-c") and i + 1 < len(command_line):
            files.append(command_line[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def quiet_progress_bar(trainer) -> None:
    """When stdout is not a terminal (a log file, a batch job), Lightning's tqdm bar redraws every step into the log:
    there it refreshes every 4% of the run instead. (Its Rich bar, the default where rich is installed, already
    writes only its last state there.)"""
    from lightning.pytorch.callbacks import TQDMProgressBar

    bar = trainer.progress_bar_callback
    if sys.stdout.isatty() or type(bar) is not TQDMProgressBar or bar.refresh_rate != 1:  # a user's own bar stays
        return
    steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 1000
    trainer.callbacks[trainer.callbacks.index(bar)] = TQDMProgressBar(refresh_rate=max(1, steps // 25))
