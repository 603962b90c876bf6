"""Command line: ``python -m mmf_lightning {fit,validate,test,predict} --config X.yaml`` (LightningCLI),
``python -m mmf_lightning sample --ckpt_path CKPT ...``, ``python -m mmf_lightning evaluate CKPT ...``
and ``python -m mmf_lightning download-weights``."""

import argparse
import importlib
import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from mmf_lightning.callbacks import FID, LambdaScheduler, SampleFigures
from mmf_lightning.callbacks.run_config import RunConfig
from mmf_lightning.module import MeanFlowModule


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
            from mmf_lightning.checkpoints import AtomicCheckpointIO

            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # a crash mid-save keeps the previous file
        return trainer

    def parse_arguments(self, parser, args) -> None:
        """Parses, and reads a ``--ckpt_path`` file safely (``weights_only``) before anything else
        does, so a truncated or foreign file stops the command with its name."""
        from mmf_lightning.checkpoints import read_checkpoint

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


def sample_main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m mmf_lightning sample",
        description="Draw samples from a checkpoint (EMA weights when the run used EMA).",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `fit`")
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="number of jumps from t = 1 to t = 0")
    parser.add_argument("--output", required=True, help="output .npz (a .png picture is written beside it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", type=int, default=None, help="class label (class-conditional nets)")
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=1.0,
        help="classifier-free guidance at sampling time (class-conditional nets trained with label dropout; 1: none)",
    )
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from tqdm import tqdm

    from mmf_lightning.plots import save_samples_figure

    ckpt = Path(args.ckpt_path)
    if not ckpt.is_file():
        parser.error(f"--ckpt_path {ckpt} does not exist")
    if args.num_samples < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error(
            f"--num_samples, --steps and --batch_size must be >= 1, got {args.num_samples}, "
            f"{args.steps}, {args.batch_size}"
        )
    output = Path(args.output)
    if output.suffix != ".npz":
        parser.error(f"--output must end in .npz, got {output}")
    module = MeanFlowModule.load_from_checkpoint(ckpt, map_location=args.device).eval()
    if args.guidance_scale != 1.0 and not getattr(module.net, "num_classes", None):
        parser.error(f"--guidance_scale {args.guidance_scale}: the network of {ckpt} is not class-conditional")
    module.guidance_scale = args.guidance_scale
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    sizes = [min(args.batch_size, args.num_samples - i) for i in range(0, args.num_samples, args.batch_size)]
    chunks = [
        module.sample(n, args.steps, y=args.label, generator=generator).cpu()
        for n in tqdm(sizes, desc=f"sampling ({args.steps} step{'s' if args.steps > 1 else ''})", unit="batch")
    ]
    samples = torch.cat(chunks)
    decode = _latent_decoder(ckpt)
    if decode is not None:  # a latent-space run: its samples become images, through the run's autoencoder
        samples = torch.cat([decode(chunk) for chunk in samples.split(args.batch_size)])
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, samples=samples.numpy())
    save_samples_figure({f"{args.steps}-step samples": samples}, output.with_suffix(".png"))
    print(f"wrote {output} ({tuple(samples.shape)}) and {output.with_suffix('.png')}")
    return output


def _latent_decoder(ckpt: Path):
    """``decode`` of the run's DataModule when the run trained in a latent space (``data.LatentDataModule``), else
    None. The DataModule is built from the run config the checkpoint carries; decoding needs no data, only the
    autoencoder and the latents' scale (stored with the encoded training latents, so those must be in the cache)."""
    from mmf_lightning.callbacks.run_config import RUN_CONFIG_KEY
    from mmf_lightning.checkpoints import read_checkpoint

    config = read_checkpoint(ckpt).get(RUN_CONFIG_KEY)
    data = config.get("data") if isinstance(config, dict) else None
    if not (isinstance(data, dict) and str(data.get("class_path", "")).endswith("LatentDataModule")):
        return None
    from mmf_lightning.evaluate import instantiate_run

    datamodule, _ = instantiate_run(config, with_fid=False, fid_num_samples=None)
    return datamodule.decode


# the commands LightningCLI does not have: name -> (module, function of the arguments after the name);
# imported on use, so `fit` does not load the evaluation code
COMMANDS = {
    "sample": ("mmf_lightning.cli", "sample_main", "Draw samples from a checkpoint into an .npz and a picture."),
    "evaluate": ("mmf_lightning.evaluate", "evaluate_main", "The paper's metrics for checkpoints: JSON, tables, plot."),
    "plot": ("mmf_lightning.plots", "plot_main", "The paper's figures (Figs. 1-6) for a folder of runs, as PNG files."),
    "download-weights": (
        "mmf_lightning.metrics.weights",
        "download_weights_main",
        "Stage FID's Inception and LPIPS' AlexNet weights for offline use.",
    ),
}


TRACEBACK_ENV = "MMF_LIGHTNING_TRACEBACK"
PACKAGE_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    """``argv`` defaults to ``sys.argv[1:]``; tests pass it explicitly. An error raised by this
    package's own checks (a bad value, a missing file, an unreadable checkpoint) ends in one line,
    ``error: <what>; <what to do>``, with exit status 2; ``MMF_LIGHTNING_TRACEBACK=1`` shows the
    traceback instead. Errors from elsewhere keep their traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if args and args[0] in COMMANDS:
            module, function, _ = COMMANDS[args[0]]
            getattr(importlib.import_module(module), function)(args[1:])
            return
        MMFLightningCLI(args=None if argv is None else args)
    except (ValueError, OSError, TypeError) as err:
        if os.environ.get(TRACEBACK_ENV, "0") == "1" or not raised_by_this_package(err):
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def raised_by_this_package(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in this package's code: our own
    checks, whose messages name the value and the fix (not a bug deep inside a library)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return PACKAGE_DIR in Path(tb.tb_frame.f_code.co_filename).resolve().parents


if __name__ == "__main__":
    main()
