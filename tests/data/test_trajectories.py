"""Trajectory DataModules: ground truth against closed forms, batch structure, bad input."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmf_lightning.data import NpzTrajectoryDataModule, ODEDataModule, PointMassDataModule
from mmf_lightning.data.trajectories import SYSTEMS, solve_trajectories
from mmf_lightning.objectives import SampledPath


def test_gradient_flow_matches_exponential_decay():
    x1 = np.random.default_rng(0).uniform(-2, 2, (50, 2))
    states = solve_trajectories("gradient_flow", x1, horizon=1.5, num_points=7)
    s = np.linspace(0, 1.5, 7)
    np.testing.assert_allclose(states, x1[:, None] * np.exp(-s)[None, :, None], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_path_batches_follow_the_dynamics(system):
    dm = ODEDataModule(system, supervision="path", num_train=64, num_val=8, batch_size=16, horizon=2.0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "e", "path", "path_velocity"}
    assert batch["path"].shape == (16, 33, 2)
    torch.testing.assert_close(batch["path"][:, 0], batch["x"])
    torch.testing.assert_close(batch["path"][:, -1], batch["e"])
    # path time t = 1 - s / T: v_t = -T f(z_t)
    f = torch.from_numpy(SYSTEMS[system](batch["path"].double().numpy())).float()
    torch.testing.assert_close(batch["path_velocity"], -2.0 * f, rtol=1e-4, atol=1e-4)
    # the Hermite path between grid points agrees with a finite difference of itself
    path = SampledPath(batch["path"].double(), batch["path_velocity"].double())
    t, h = torch.full((16,), 0.37, dtype=torch.float64), 1e-5
    fd = (path(t + h)[0] - path(t - h)[0]) / (2 * h)
    torch.testing.assert_close(path(t)[1], fd, rtol=1e-3, atol=1e-3)


def test_ground_truth_is_ordered_like_sampling():
    dm = ODEDataModule("gradient_flow", horizon=1.0, num_points=5)
    x1 = torch.tensor([[1.0, -2.0]])
    truth = dm.ground_truth(x1)
    assert truth.shape == (5, 1, 2)
    torch.testing.assert_close(truth[0], x1)  # t = 1 first, like sample_trajectory
    torch.testing.assert_close(truth[-1], x1 * math.exp(-1.0))


def test_endpoint_observations_are_noisy_and_seeded():
    clean = ODEDataModule(num_train=4000, num_val=10)
    noisy = ODEDataModule(num_train=4000, num_val=10, observation_noise=0.1)
    for dm in (clean, noisy):
        dm.setup()
    assert set(noisy.train_set[0]) == {"x", "e"}
    dx = noisy.train_set.tensors["x"] - clean.train_set.tensors["x"]
    assert abs(dx.std().item() - 0.1) < 0.005
    again = ODEDataModule(num_train=4000, num_val=10, observation_noise=0.1)
    again.setup()
    assert torch.equal(again.train_set.tensors["x"], noisy.train_set.tensors["x"])


def test_point_mass_minimum_effort_path():
    dm = PointMassDataModule(supervision="path", num_train=200, num_val=10, num_points=65)
    dm.setup()
    b = dm.train_set.tensors
    torch.testing.assert_close(b["x"].norm(dim=1), torch.full((200,), 2.0))  # the goal ring
    torch.testing.assert_close(b["path_velocity"][:, [0, -1]], torch.zeros(200, 2, 2))  # at rest at both ends
    # acceleration of the cubic: constant sign of jerk, peak 6 |x0 - x1| / T^2 at the ends
    acc = torch.diff(b["path_velocity"], dim=1) * 64
    peak = acc.norm(dim=2).max(dim=1).values
    torch.testing.assert_close(peak, 6 * (b["x"] - b["e"]).norm(dim=1), rtol=0.1, atol=0.1)
    with pytest.raises(ValueError, match=r"needs peak acceleration .* > max_acceleration 1.0"):
        PointMassDataModule(max_acceleration=1.0, num_train=10).setup()


def test_bad_trajectory_input(tmp_path):
    states = np.random.default_rng(0).normal(size=(20, 9, 2))
    states[3, 4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", states=states)
    with pytest.raises(ValueError, match=r"nan.npz: states hold NaN or Inf in 1 trajectories \(first: index 3\)"):
        NpzTrajectoryDataModule(str(tmp_path / "nan.npz"))
    states[3, 4, 1] = 0.0
    np.savez(tmp_path / "ok.npz", states=states)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.npz is not a readable .npz"):
        NpzTrajectoryDataModule(str(tmp_path / "cut.npz"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NpzTrajectoryDataModule(str(tmp_path / "none.npz"))
    dm = NpzTrajectoryDataModule(str(tmp_path / "ok.npz"), supervision="path", batch_size=4)
    dm.setup()
    assert len(dm.train_set) == 18 and dm.train_set[0]["path"].shape == (9, 2)
    with pytest.raises(ValueError, match="supervision must be"):
        ODEDataModule(supervision="full")
    with pytest.raises(ValueError, match="unknown system 'lorenz'"):
        ODEDataModule("lorenz")


# -- an .npz task end to end: fit with validation, then evaluate --------------------------------------
ROOT = Path(__file__).resolve().parents[2]


def _gradient_flow_file(path: Path, n: int = 60, num_points: int = 9) -> np.ndarray:
    """Exponential-decay trajectories x1 e^{-s}, s in [0, 1], written as an .npz: (n, num_points, 2)."""
    x1 = np.random.default_rng(0).uniform(-2, 2, (n, 2))
    states = x1[:, None] * np.exp(-np.linspace(0, 1, num_points))[None, :, None]
    np.savez(path, states=states)
    return states


def test_npz_task_is_judged_on_its_held_out_trajectories(tmp_path):
    """An .npz task has no ground truth for new starts. A real fit with validation (PathMetrics)
    and `evaluate` on its checkpoint judge the model from the starts of the held-out trajectories
    against those trajectories, and say so; with nothing held out, they skip those metrics and the
    report says why."""
    from mmf_lightning import MeanFlowModule
    from mmf_lightning.commands import main
    from mmf_lightning.commands.fit import MMFLightningCLI

    states = _gradient_flow_file(tmp_path / "traj.npz")
    cli = MMFLightningCLI(args=[
        "fit", "--config", str(ROOT / "configs/ode/gradient_flow_lambda0.yaml"),
        "--data=mmf_lightning.data.NpzTrajectoryDataModule", f"--data.init_args.file={tmp_path / 'traj.npz'}",
        "--data.init_args.val_fraction=0.2", "--data.init_args.batch_size=16",
        "--model.net.init_args.width=32", "--model.net.init_args.depth=2",
        "--trainer.max_steps=4", "--trainer.val_check_interval=2", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ])  # fmt: skip
    logged = cli.trainer.logged_metrics
    assert {"val/path_error", "val/end_error", "val/one_step_error_truth", "val/d_path"} <= set(logged)
    ckpt = cli.trainer.checkpoint_callback.last_model_path

    out = tmp_path / "eval"
    main(["evaluate", ckpt, "--output", str(out), "--num_samples", "64", "--steps", "4", "--timing_repeats", "0"])
    (run,) = json.loads((out / "evaluation.json").read_text())["runs"].values()
    assert "12 held-out trajectories" in run["trajectory_truth"]
    # independently: the 12 held-out trajectories (a permutation by seed 0), x1 first, against the model's 8 steps
    held_out = torch.randperm(60, generator=torch.Generator().manual_seed(0))[:12]
    truth = torch.from_numpy(states[held_out.numpy()]).float().transpose(0, 1)  # (9, 12, 2), t = 1 -> 0
    module = MeanFlowModule.load_from_checkpoint(ckpt, map_location="cpu")
    distance = (module.trajectory_from(truth[0], 8) - truth).double().norm(dim=-1)
    metrics = run["metrics"]
    assert metrics["path_error"] == pytest.approx(distance.mean().item(), rel=1e-5)
    assert metrics["end_error"] == pytest.approx(distance[-1].mean().item(), rel=1e-5)
    one_step = module.trajectory_from(truth[0], 1)[-1]
    assert metrics["one_step_error_truth"] == pytest.approx((one_step - truth[-1]).double().square().mean().item())

    # nothing held out: the truth metrics are skipped, and the report says so
    main(["evaluate", ckpt, "--output", str(out), "--num_samples", "64", "--steps", "4", "--timing_repeats", "0",
          "--data.init_args.val_fraction=0"])  # fmt: skip
    (run,) = json.loads((out / "evaluation.json").read_text())["runs"].values()
    assert {"one_step_error", "d_path"} <= set(run["metrics"])
    assert not {"path_error", "end_error", "one_step_error_truth"} & set(run["metrics"])
    assert "not computed" in run["trajectory_truth"] and "no ground truth for new starts" in run["trajectory_truth"]
    assert "val_fraction=0.0" in run["description"]
    md = (out / "evaluation.md").read_text()
    assert "trajectory-truth metrics (path_error, end_error, one_step_error_truth) not computed" in md


def test_npz_without_held_out_trajectories_warns_in_validation(tmp_path):
    from mmf_lightning.callbacks import PathMetrics

    _gradient_flow_file(tmp_path / "traj.npz")
    dm = NpzTrajectoryDataModule(str(tmp_path / "traj.npz"), val_fraction=0.0)
    with pytest.raises(NotImplementedError, match="no ground truth for new starts"):
        dm.ground_truth(torch.zeros(1, 2))

    class Trainer:
        datamodule = dm

    with pytest.warns(UserWarning, match="val/path_error.*not computed.*val_fraction=0.0 holds none out"):
        PathMetrics(lpips=False).setup(Trainer(), None, "fit")
