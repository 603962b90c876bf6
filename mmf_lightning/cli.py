"""Command line: ``python -m mmf_lightning {fit,validate,test,predict} --config X.yaml`` (LightningCLI),
``python -m mmf_lightning sample --ckpt_path CKPT ...``, ``python -m mmf_lightning evaluate CKPT ...``
and ``python -m mmf_lightning download-weights``."""

import argparse
import importlib
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from mmf_lightning.callbacks import FID, LambdaScheduler, SampleFigures
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
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(LambdaScheduler, "lambda_schedule")
        parser.add_subclass_arguments(FID, "fid", required=False, help="FID in validation; off unless configured")

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        fid = self._get(self.config_init, "fid")
        if fid is not None:
            trainer.callbacks.append(fid)
        return trainer

    def before_instantiate_classes(self) -> None:
        """Name the run after its config file (``configs/ode/lambda0.yaml`` -> ``ode/lambda0``)
        unless the logger was given a name."""
        cfg = self.config[self.config.subcommand] if "subcommand" in self.config else self.config
        logger, configs = cfg.get("trainer", {}).get("logger"), cfg.get("config") or []
        args = getattr(logger, "init_args", None)
        if not configs or args is None or args.get("name", "") not in (None, "lightning_logs"):
            return
        path = Path(str(configs[-1])).with_suffix("")
        parts = path.parts[path.parts.index("configs") + 1 :] if "configs" in path.parts else (path.name,)
        args.name = "/".join(parts)

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
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    sizes = [min(args.batch_size, args.num_samples - i) for i in range(0, args.num_samples, args.batch_size)]
    chunks = [
        module.sample(n, args.steps, y=args.label, generator=generator).cpu()
        for n in tqdm(sizes, desc=f"sampling ({args.steps} step{'s' if args.steps > 1 else ''})", unit="batch")
    ]
    samples = torch.cat(chunks)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, samples=samples.numpy())
    save_samples_figure({f"{args.steps}-step samples": samples}, output.with_suffix(".png"))
    print(f"wrote {output} ({tuple(samples.shape)}) and {output.with_suffix('.png')}")
    return output


# the commands LightningCLI does not have: name -> (module, function of the arguments after the name);
# imported on use, so `fit` does not load the evaluation code
COMMANDS = {
    "sample": ("mmf_lightning.cli", "sample_main"),
    "evaluate": ("mmf_lightning.evaluate", "evaluate_main"),
    "download-weights": ("mmf_lightning.metrics.weights", "download_weights_main"),
}


def main(argv: list[str] | None = None) -> None:
    """``argv`` defaults to ``sys.argv[1:]``; tests pass it explicitly."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in COMMANDS:
        module, function = COMMANDS[args[0]]
        getattr(importlib.import_module(module), function)(args[1:])
        return
    MMFLightningCLI(args=None if argv is None else args)


if __name__ == "__main__":
    main()
