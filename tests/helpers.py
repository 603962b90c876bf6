"""Small data and recording callbacks the tests plug into real Trainer / CLI runs."""

import json
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmf_lightning.commands.fit import MMFLightningCLI
from mmf_lightning.objectives import TimeSampler


def directional_difference(loss_fn, params, direction, h: float = 1e-6) -> torch.Tensor:
    """Central difference of ``loss_fn()`` along ``direction`` in ``params`` (moved in place, then restored)."""
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
        plus = loss_fn()
        for p, d in zip(params, direction):
            p.sub_(2 * h * d)
        minus = loss_fn()
        for p, d in zip(params, direction):
            p.add_(h * d)
    return (plus - minus) / (2 * h)


def quiet_trainer(tmp_path, max_steps=6, callbacks=(), logger=False, **kw) -> L.Trainer:
    """A CPU Trainer without progress bar or summary (and without logger unless given one), for short real runs."""
    args = dict(limit_val_batches=1, log_every_n_steps=1)
    args.update(kw)
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        default_root_dir=tmp_path,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **args,
    )


class _Images(Dataset):
    def __init__(self, n, shape, num_classes, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = (torch.rand(n, *shape, generator=g) * 2 - 1).clamp(-1, 1)
        self.y = torch.randint(0, num_classes, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class SmallImages(L.LightningDataModule):
    """Stand-in for a dataset that cannot be on this machine: same shape and classes, 64 images."""

    def __init__(self, channels: int = 3, image_size: int = 32, num_classes: int = 10, batch_size: int = 8):
        super().__init__()
        self.data_shape = (channels, image_size, image_size)
        self.num_classes = num_classes
        self.batch_size = batch_size

    def setup(self, stage=None):
        self.train_set = _Images(64, self.data_shape, self.num_classes, 0)
        self.val_set = _Images(16, self.data_shape, self.num_classes, 1)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def reference_set(self, split="train"):
        return _Images(64, self.data_shape, self.num_classes, 0) if split == "train" else self.val_set

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TinyExtractor(nn.Module):
    """A fixed random projection of 4x4-pooled pixels: any size in, 16 features out."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 16, 16)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        x = x.float().expand(-1, 3, -1, -1) / 255
        return torch.tanh(self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)))


class LambdaRecorder(L.Callback):
    """Appends (optimizer step, lambda used) to a JSON-lines file at every training batch.
    Must come after the LambdaScheduler in the callback list."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.is_global_zero:
            with self.path.open("a") as f:
                f.write(json.dumps([trainer.global_step, pl_module.lam]) + "\n")


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2) tensor gathered whole on every rank; any other tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class GradientRecorder(L.Callback):
    """Saves every parameter's gradient, per rank, at the first optimizer step."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            grads = {n: _full(p.grad).detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            missing = [n for n, p in pl_module.named_parameters() if p.requires_grad and p.grad is None]
            torch.save(
                {"grads": grads, "missing": missing, "lam": pl_module.lam},
                self.out_dir / f"rank{trainer.global_rank}.pt",
            )


class ShardRecorder(L.Callback):
    """Saves, per rank, every training row it saw and a draw from torch's generator at each step."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.rows, self.draws = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append(batch["x"].detach().cpu())
        self.draws.append(torch.rand(4))

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"rows": torch.cat(self.rows), "draws": torch.stack(self.draws)},
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


class MetricsRecorder(L.Callback):
    """Writes the logged metrics, per rank, to ``{out_dir}/rank{r}.json`` after each validation."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_validation_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(metrics))


class FirstStepRecorder(L.Callback):
    """Saves, per rank, what the first training step starts from: its batch, torch's RNG state, the
    net's weights and lambda, so a test can replay the step in one process. After the LambdaScheduler."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and batch_idx == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            state = {
                "batch": {k: v.detach().clone() for k, v in batch.items()},
                "rng": torch.get_rng_state(),
                "net": {k: _full(v).detach().clone() for k, v in pl_module.net.state_dict().items()},
                "lam": pl_module.lam,
            }
            torch.save(state, self.out_dir / f"start_rank{trainer.global_rank}.pt")


class NaNInjector(L.Callback):
    """Puts a NaN into the batch of one rank at optimizer steps ``step`` to ``until`` (excluded;
    default: that step alone)."""

    def __init__(self, rank: int = 1, step: int = 1, until: int | None = None):
        self.rank, self.step, self.until = rank, step, until if until is not None else step + 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and self.step <= trainer.global_step < self.until:
            batch["x"][0] = float("nan")


# command-line options that make the image configs run here: a small UNet
SMALL_UNET = [
    "--model.net.init_args.channels=16",
    "--model.net.init_args.channel_mult=[1,2]",
    "--model.net.init_args.num_res_blocks=1",
    "--model.net.init_args.groups=8",
]

# datasets that cannot be on this machine, and the small data of the same shape that stands in;
# their FID keeps its path (reference statistics at setup) with a small extractor, not Inception
SMALL_FID = ["--fid.init_args.feature_extractor=helpers.TinyExtractor", "--fid.init_args.num_samples=16"]
STAND_INS = {
    "cifar10": ["--data=helpers.SmallImages", "--data.init_args.batch_size=8", *SMALL_FID],
    "cifar10_low_data": ["--data=helpers.SmallImages", "--data.init_args.batch_size=8", *SMALL_FID],
    "imagenet64": [
        "--data=helpers.SmallImages",
        "--data.init_args.batch_size=4",
        "--data.init_args.image_size=64",
        "--data.init_args.num_classes=1000",
        *SMALL_FID,
    ],
    "latent": [  # a smaller DiT
        "--model.net.init_args.width=32",
        "--model.net.init_args.depth=1",
        "--model.net.init_args.heads=2",
    ],
}


class ParseOnly(MMFLightningCLI):
    """The CLI up to a validated config: nothing is built or run."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


class StepMarker(L.Callback):
    """Writes "<first step> <step> <lambda>" to ``path`` at every optimizer step from ``step`` on
    (a test waits for it; the first step shows where a resumed run started)."""

    def __init__(self, path: str, step: int = 3, pause: float = 0.0):
        self.path, self.step, self.pause, self.first = path, step, pause, None

    def on_train_start(self, trainer, pl_module):
        self.first = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step and trainer.is_global_zero:
            Path(self.path).write_text(f"{self.first} {trainer.global_step} {pl_module.lam}")
            if trainer.global_step == self.step:
                time.sleep(self.pause)  # room for a test's signal to land at this step


class RankSkewedTimes(TimeSampler):
    """Uniform times with every row r < t on rank 0 and every row r = t on rank 1 (of a process group): the two
    ranks' batches take different branches of the objective's step."""

    def __init__(self):
        super().__init__("uniform", equal_fraction=0.5)

    def equal_count(self, n: int) -> int:
        import torch.distributed as dist

        return n if dist.is_initialized() and dist.get_rank() == 1 else 0
