"""Small folders of real runs, as the sweeps of the paper's studies leave them, for the notebooks
and the `plot` command: each run is a real `fit` of a task config (its own data, net and
callbacks), cut to a few steps with validation twice, so every curve has points."""

from pathlib import Path

from helpers import SMALL_UNET

from mmf_lightning.commands.evaluate import evaluate_main
from mmf_lightning.commands.fit import MMFLightningCLI

ROOT = Path(__file__).resolve().parents[1]
CONSTANT = '{{"class_path": "mmf_lightning.objectives.Constant", "init_args": {{"value": {}}}}}'
SHORT = ["--trainer.max_steps=8", "--trainer.val_check_interval=4", "--trainer.log_every_n_steps=1",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip


def fit(config: str, save_dir: Path, *extra: str) -> Path:
    """One short run of ``configs/<config>`` logged under ``save_dir``; its folder."""
    cli = MMFLightningCLI(
        args=[
            "fit",
            "--config",
            str(ROOT / "configs" / config),
            *SHORT,
            f"--trainer.default_root_dir={save_dir}",
            *extra,
        ]
    )
    return Path(cli.trainer.checkpoint_callback.last_model_path).parents[1]


def lambda_runs(root: Path) -> Path:
    """The lambda study on the 2-D checkerboard: lambda = 0, 1 and the curriculum (Figs. 1, 2, 4, 5)."""
    folder = root / "toy2d"
    for value in (0.0, 1.0):
        fit("toy2d/curriculum.yaml", folder, f"--lambda_schedule.schedule={CONSTANT.format(value)}")
    fit("toy2d/curriculum.yaml", folder, "--lambda_schedule.schedule.init_args.warmup_steps=6")
    return folder


def data_fraction_runs(root: Path) -> Path:
    """Digits at 50% and 100% of the training data, lambda = 0 against the curriculum, with FID
    in validation, and one `evaluate --data` pass on a shifted set (Figs. 3, 4)."""
    folder = root / "digits"
    fid = [f"--fid.init_args.cache_dir={root / 'fid'}", "--fid.init_args.num_samples=64",
           f"--fid.init_args.feature_extractor.init_args.weights_path={root.parent / 'digits.pt'}"]  # fmt: skip
    ckpts = []
    for fraction in (0.5, 1.0):
        for schedule in (CONSTANT.format(0.0), None):  # 6 steps, one validation: the UNet's path metrics cost most
            args = [*SMALL_UNET, *fid, f"--data.init_args.subset_fraction={fraction}", "--trainer.max_steps=6",
                    "--trainer.val_check_interval=6"]  # fmt: skip
            args += [f"--lambda_schedule.schedule={schedule}"] if schedule else []
            run = fit("digits/curriculum.yaml", folder, *args)
            ckpts.append(str(run / "checkpoints" / "last.ckpt"))
    evaluate_main([*ckpts, "--data", str(ROOT / "configs/presets/data_shift_digits_gaussian_noise.yaml"), "--quick",
                   "--num_samples=32", "--distance_samples=64", "--timing_repeats=1", "--fid_num_samples=64",
                   "--no-lpips", f"--output={folder / 'evaluation' / 'digits_noise'}"])  # fmt: skip
    return folder


def trajectory_runs(root: Path) -> Path:
    """The ODE (gradient flow) with lambda = 0 and the curriculum, and the control task (Fig. 6)."""
    folder = root / "trajectories"
    fit("ode/gradient_flow_curriculum.yaml", folder, f"--lambda_schedule.schedule={CONSTANT.format(0.0)}")
    fit("ode/gradient_flow_curriculum.yaml", folder)
    fit("control/curriculum.yaml", folder)
    return folder


def conditional_runs(root: Path) -> Path:
    """Class-conditional 2-D moons with the guidance scale as a network input (configs/recipes/imf_moons.yaml)."""
    folder = root / "conditional"
    fit("recipes/imf_moons.yaml", folder)
    return folder


class PaperRuns:
    """The folders above, each made on first use: ``runs["toy2d" | "digits" | "trajectories" | "conditional"]``."""

    MAKERS = {
        "toy2d": lambda_runs,
        "digits": data_fraction_runs,
        "trajectories": trajectory_runs,
        "conditional": conditional_runs,
    }

    def __init__(self, root: Path):
        self.root, self.made = root, {}

    def __getitem__(self, name: str) -> Path:
        """The folder, made by the first process that asks (xdist workers share ``root``; the others wait)."""
        if name not in self.made:
            from filelock import FileLock

            with FileLock(str(self.root / f"{name}.lock")):
                done = self.root / f"{name}.done"
                if not done.exists():
                    done.write_text(str(self.MAKERS[name](self.root)))
                self.made[name] = Path(done.read_text())
        return self.made[name]
