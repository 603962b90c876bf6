"""``python -m mmf_lightning sample --ckpt_path CKPT ...``: samples of a checkpoint into an .npz and a picture."""

from pathlib import Path

from mmf_lightning.commands import CommandParser


def sample_main(argv: list[str]) -> list[Path]:
    parser = CommandParser(
        prog="python -m mmf_lightning sample",
        description="Draw samples from a checkpoint (EMA weights when the run used EMA).",
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="a checkpoint written by `fit`, a run folder or a folder of runs (one .npz each)",
    )
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="number of jumps from t = 1 to t = 0")
    parser.add_argument(
        "--output",
        required=True,
        help="output .npz (a .png picture beside it); for a folder of runs <name>_<run>.npz, one for each run",
    )
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
    from mmf_lightning.runs.folders import checkpoints_in

    try:  # a checkpoint, a run folder (its last.ckpt) or a folder of runs (each run's)
        ckpts = checkpoints_in(args.ckpt_path)
    except FileNotFoundError as err:
        parser.error(f"--ckpt_path: {err}")
    if args.num_samples < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error(
            f"--num_samples, --steps and --batch_size must be >= 1, got {args.num_samples}, "
            f"{args.steps}, {args.batch_size}"
        )
    output = Path(args.output)
    if output.suffix != ".npz":
        parser.error(f"--output must end in .npz, got {output}")
    if len(ckpts) == 1:
        return [_sample_one(ckpts[0], output, args, parser)]
    root = Path(args.ckpt_path)  # a folder of runs: one .npz per run, named after its folder
    return [
        _sample_one(
            c, output.with_name(f"{output.stem}_{'-'.join(c.parents[1].relative_to(root).parts)}.npz"), args, parser
        )
        for c in ckpts
    ]


def _sample_one(ckpt: Path, output: Path, args, parser) -> Path:
    import numpy as np
    import torch

    from mmf_lightning.figures import save_samples_figure
    from mmf_lightning.training.module import MeanFlowModule
    from mmf_lightning.utils.console import progress

    module = MeanFlowModule.load_from_checkpoint(ckpt, map_location=args.device).eval()
    if args.guidance_scale != 1.0 and not getattr(module.net, "num_classes", None):
        parser.error(f"--guidance_scale {args.guidance_scale}: the network of {ckpt} is not class-conditional")
    module.guidance_scale = args.guidance_scale
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    sizes = [min(args.batch_size, args.num_samples - i) for i in range(0, args.num_samples, args.batch_size)]
    chunks = [
        module.sample(n, args.steps, y=args.label, generator=generator).cpu()
        for n in progress(sizes, desc=f"sampling ({args.steps} step{'s' if args.steps > 1 else ''})", unit="batch")
    ]
    samples = torch.cat(chunks)
    decode = _latent_decoder(ckpt)
    if decode is not None:  # a latent-space run: its samples become images, through the run's autoencoder
        samples = torch.cat([decode(chunk) for chunk in samples.split(args.batch_size)])
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, samples=samples.numpy())
    reference = _reference_data(ckpt, len(samples)) if samples.dim() == 2 else None  # the data behind 2-D samples
    save_samples_figure({f"{args.steps}-step samples": samples}, output.with_suffix(".png"), reference=reference)
    print(f"wrote {output} ({tuple(samples.shape)}) and {output.with_suffix('.png')}")
    return output


def _latent_decoder(ckpt: Path):
    """``decode`` of the run's DataModule when the run trained in a latent space (``data.LatentDataModule``), else
    None. The DataModule is built from the run config the checkpoint carries; decoding needs no data, only the
    autoencoder and the latents' scale (stored with the encoded training latents, so those must be in the cache)."""
    from mmf_lightning.runs.run_config import RUN_CONFIG_KEY
    from mmf_lightning.training.checkpoints import read_checkpoint

    config = read_checkpoint(ckpt).get(RUN_CONFIG_KEY)
    data = config.get("data") if isinstance(config, dict) else None
    if not (isinstance(data, dict) and str(data.get("class_path", "")).endswith("LatentDataModule")):
        return None
    from mmf_lightning.runs.configs import instantiate_run

    datamodule, _ = instantiate_run(config, with_fid=False, fid_num_samples=None)
    return datamodule.decode


def _reference_data(ckpt: Path, n: int):
    """``n`` points of the run's data (its datamodule's ``reference_samples``, built from the config the checkpoint
    carries), or None when the run has no such data or no config."""
    from mmf_lightning.data.base import reference_points
    from mmf_lightning.runs.configs import instantiate_run
    from mmf_lightning.runs.run_config import RUN_CONFIG_KEY
    from mmf_lightning.training.checkpoints import read_checkpoint

    config = read_checkpoint(ckpt).get(RUN_CONFIG_KEY)
    if not isinstance(config, dict) or "data" not in config:
        return None
    return reference_points(instantiate_run(config, with_fid=False, fid_num_samples=None)[0], n)
