"""Trajectory tasks (paper section 5.6): known dynamics carry a start x1 (t = 1, drawn from a
source) to an end x0 (t = 0); the model learns the average velocity of those dynamics, so one
jump maps x1 to x0 and K jumps retrace the path.

Time: the physical trajectory runs s in [0, T] from x1 to x0; our path time is t = 1 - s / T,
so z_t = x(s = (1 - t) T) and v_t = dz_t/dt = -T dx/ds.

Supervision:
- "endpoints": batches {"x": noisy x0, "e": noisy x1}; the path is the straight line between
  them (the paper's setting: "only noisy observations of the endpoints").
- "path": batches also carry the true trajectory on the grid ("path", "path_velocity"), and the
  objective reads (z_t, v_t) from it, so u learns the average velocity of the true dynamics.

Judged by (docs/tasks.md): the error of the model's K-step trajectory from clean starts against
the ground truth on the same grid, and of its one-step end point.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

from mmf_lightning.data.base import DataModuleBase, DictDataset
from mmf_lightning.sources import Source, UniformBox
from mmf_lightning.utils.config import check_count


def _gradient_flow(x: np.ndarray) -> np.ndarray:
    """dx/ds = -grad V(x), V = |x|^2 / 2: exponential decay to 0."""
    return -x


def _damped_oscillator(x: np.ndarray, omega: float = 3.0, zeta: float = 0.2) -> np.ndarray:
    """(position p, velocity q): dp = q, dq = -omega^2 p - 2 zeta omega q."""
    p, q = x[..., 0], x[..., 1]
    return np.stack([q, -(omega**2) * p - 2 * zeta * omega * q], axis=-1)


def _van_der_pol(x: np.ndarray, mu: float = 1.0) -> np.ndarray:
    """dx = y, dy = mu (1 - x^2) y - x."""
    p, q = x[..., 0], x[..., 1]
    return np.stack([q, mu * (1 - p**2) * q - p], axis=-1)


SYSTEMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gradient_flow": _gradient_flow,
    "damped_oscillator": _damped_oscillator,
    "van_der_pol": _van_der_pol,
}


def solve_trajectories(system: str, x1: np.ndarray, horizon: float, num_points: int) -> np.ndarray:
    """The physical trajectories x(s) of ``system`` from x1 (N, D) at s_j = j T / (num_points - 1):
    (N, num_points, D), by ``scipy.integrate.solve_ivp`` (RK45, rtol 1e-9) on all N at once."""
    f = SYSTEMS[system]
    n, d = x1.shape
    s = np.linspace(0.0, horizon, num_points)
    sol = solve_ivp(
        lambda _, y: f(y.reshape(n, d)).reshape(-1), (0.0, horizon), x1.reshape(-1), t_eval=s, rtol=1e-9, atol=1e-11
    )
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed on {system}: {sol.message}")
    return sol.y.reshape(n, d, num_points).transpose(0, 2, 1)


def to_path_time(states: np.ndarray, velocities: np.ndarray, horizon: float):
    """Physical (x(s_j), dx/ds) from x1 to x0 -> our grid t_k = k / K from x0 (t = 0) to x1 (t = 1)."""
    return states[:, ::-1].copy(), -horizon * velocities[:, ::-1].copy()


class TrajectoryDataModule(DataModuleBase):
    """Base: subclasses give ``physical_trajectories(x1) -> (states, dx/ds)``, both (N, K + 1, D)
    from x1 at s = 0 to x0 at s = T.

    Args:
        source: distribution of the starts x1 (the model's ``source`` must be the same).
        horizon: T.
        num_points: K + 1 grid points per trajectory.
        supervision: "endpoints" or "path" (module docstring).
        observation_noise: std of Gaussian noise on the observed endpoints ("endpoints" only).
        num_train, num_val, seed: sizes; the data are the same on every rank for a seed.
        batch_size, num_workers, persistent_workers, pin_memory: see ``DataModuleBase``.
    """

    dim = 2

    def __init__(
        self,
        source: Source | None = None,
        horizon: float = 1.0,
        num_points: int = 33,
        supervision: str = "endpoints",
        observation_noise: float = 0.0,
        num_train: int = 20_000,
        num_val: int = 2_000,
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
    ):
        super().__init__(batch_size, num_workers, persistent_workers, pin_memory)
        if supervision not in ("endpoints", "path"):
            raise ValueError(f"supervision must be 'endpoints' or 'path', got {supervision!r}")
        if horizon <= 0 or num_points < 2 or observation_noise < 0:
            raise ValueError(
                f"need horizon > 0, num_points >= 2, observation_noise >= 0, got {horizon}, {num_points}, "
                f"{observation_noise}"
            )
        num_train, num_val = check_count("num_train", num_train, 1), check_count("num_val", num_val)
        self.source = source if source is not None else UniformBox(-2.0, 2.0)
        self.horizon, self.num_points = horizon, num_points
        self.supervision, self.observation_noise = supervision, observation_noise
        self.num_train, self.num_val, self.seed = num_train, num_val, check_count("seed", seed)
        self.data_shape = (self.dim,)

    def physical_trajectories(self, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def ground_truth(self, x1: torch.Tensor) -> torch.Tensor:
        """The true path of each start on the grid t_k = k / K, ordered like ``sample_trajectory``
        (from t = 1 to t = 0): (K + 1, N, D)."""
        states, velocities = self.physical_trajectories(x1.detach().double().cpu().numpy())
        return torch.from_numpy(states).float().transpose(0, 1)

    def truth_protocol(self) -> tuple[str | None, str]:
        """How the model's trajectories are judged against the truth (``metrics.evaluation``):
        ("starts", note): ``ground_truth`` gives the true path of any start, so the model's own
        starts are judged; ("held_out", note): ``held_out_paths`` gives trajectories held out of
        training, judged from their starts; (None, why not): no truth to judge against."""
        return "starts", f"fresh starts from {self.source!r} against the true dynamics on the task's grid"

    def _trajectories(self, n: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + offset)
        x1 = self.source.sample(n, self.data_shape, g).double().numpy()
        states, velocities = to_path_time(*self.physical_trajectories(x1), self.horizon)
        check_finite(states, velocities, f"{type(self).__name__} trajectories")
        return torch.from_numpy(states).float(), torch.from_numpy(velocities).float()

    def _dataset(self, n: int, offset: int) -> DictDataset:
        states, velocities = self._trajectories(n, offset)
        x0, x1 = states[:, 0], states[:, -1]
        if self.supervision == "path":
            return DictDataset(x=x0, e=x1, path=states, path_velocity=velocities)
        g = torch.Generator().manual_seed(self.seed + offset + 7)
        noise = self.observation_noise
        return DictDataset(
            x=x0 + noise * torch.randn(x0.shape, generator=g), e=x1 + noise * torch.randn(x1.shape, generator=g)
        )

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._dataset(self.num_train, 0)
        self.val_set = self._dataset(self.num_val, 1)


def check_finite(states: np.ndarray, velocities: np.ndarray, what: str) -> None:
    for name, arr in (("states", states), ("velocities", velocities)):
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise ValueError(
                f"{what}: {name} hold NaN or Inf in {len(rows)} trajectories (first: index {rows[0]}); "
                "shorten the horizon, shrink the source, or drop those trajectories"
            )


class ODEDataModule(TrajectoryDataModule):
    """Trajectories of an ODE, ground truth from ``scipy.integrate.solve_ivp``.

    Args:
        system: "gradient_flow" (dx/ds = -x, the paper's V = |x|^2 / 2), "damped_oscillator"
            or "van_der_pol".
        (the rest: ``TrajectoryDataModule``)
    """

    def __init__(self, system: str = "gradient_flow", **kwargs):
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; choose one of {sorted(SYSTEMS)}")
        super().__init__(**kwargs)
        self.system = system

    def physical_trajectories(self, x1):
        states = solve_trajectories(self.system, x1, self.horizon, self.num_points)
        return states, SYSTEMS[self.system](states)


class PointMassDataModule(TrajectoryDataModule):
    """2-D point-mass control: move from a start x1 to the nearest point x0 of the circle of
    radius ``goal_radius`` in time T, with zero velocity at both ends and acceleration bounded
    by ``max_acceleration``. Ground truth: the minimum-effort (min integral |a|^2) trajectory,
    x(s) = x1 + (x0 - x1)(3 tau^2 - 2 tau^3), tau = s / T, whose peak acceleration is
    6 |x0 - x1| / T^2; a start that would need more is an error, named before training.
    """

    def __init__(self, goal_radius: float = 2.0, max_acceleration: float = 15.0, **kwargs):
        kwargs.setdefault("source", UniformBox(-3.0, 3.0))
        super().__init__(**kwargs)
        if goal_radius <= 0 or max_acceleration <= 0:
            raise ValueError(f"need goal_radius > 0 and max_acceleration > 0, got {goal_radius}, {max_acceleration}")
        self.goal_radius, self.max_acceleration = goal_radius, max_acceleration

    def goal(self, x1: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(x1, axis=-1, keepdims=True)
        return self.goal_radius * x1 / np.maximum(norm, 1e-12)

    def physical_trajectories(self, x1):
        x0 = self.goal(x1)
        delta = x0 - x1
        peak = 6 * np.linalg.norm(delta, axis=-1) / self.horizon**2
        if (peak > self.max_acceleration).any():
            i = int(np.argmax(peak))
            raise ValueError(
                f"start {x1[i].round(3).tolist()} needs peak acceleration {peak[i]:.2f} > max_acceleration "
                f"{self.max_acceleration}; raise max_acceleration or horizon, or narrow the source"
            )
        tau = np.linspace(0.0, 1.0, self.num_points)[None, :, None]
        states = x1[:, None] + delta[:, None] * (3 * tau**2 - 2 * tau**3)
        velocities = delta[:, None] * (6 * tau - 6 * tau**2) / self.horizon
        return states, velocities


class NpzTrajectoryDataModule(TrajectoryDataModule):
    """Your own trajectories: an .npz with ``states`` (N, K + 1, D) on a uniform grid from x1 (s = 0)
    to x0 (s = T) and optionally ``velocities`` dx/ds (else central differences). Starts are the
    data's own, so ``source`` only records what the model samples from.

    There is no ground truth for new starts: the metrics against the truth (``path_error``,
    ``end_error``, ``one_step_error_truth``) judge the model from the starts of the ``val_fraction``
    held-out trajectories against those trajectories (``held_out_paths``), and are skipped, with
    a note in the report, when ``val_fraction`` is 0."""

    def __init__(self, file: str, val_fraction: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.file = Path(file)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self._states, self._velocities = self._load()
        self.data_shape = tuple(self._states.shape[2:])
        self.num_points = self._states.shape[1]

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.file.is_file():
            raise FileNotFoundError(f"trajectory file {self.file} does not exist")
        try:
            with np.load(self.file) as f:
                states = np.asarray(f["states"], dtype=np.float64)
                velocities = np.asarray(f["velocities"], dtype=np.float64) if "velocities" in f else None
        except KeyError as err:
            raise ValueError(f"{self.file} has no array 'states' (N, K + 1, D)") from err
        except Exception as err:  # BadZipFile, EOFError, OSError, ValueError: a truncated or foreign file
            raise ValueError(f"{self.file} is not a readable .npz ({err!r}); write it with numpy.savez") from err
        if states.ndim != 3 or states.shape[0] < 1 or states.shape[1] < 2 or states.shape[2] < 1:
            raise ValueError(f"{self.file}: 'states' must be (N >= 1, K + 1 >= 2, D >= 1), got {states.shape}")
        if velocities is None:
            velocities = np.gradient(states, self.horizon / (states.shape[1] - 1), axis=1)
        check_finite(states, velocities, str(self.file))
        return states, velocities

    def physical_trajectories(self, x1):
        raise NotImplementedError(
            f"{self.file} holds fixed trajectories; there is no ground truth for new starts (its held-out "
            "trajectories are the truth: held_out_paths)"
        )

    def _split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(train indices, held-out indices) of the file's trajectories: a permutation by ``seed``."""
        n = len(self._states)
        n_val = int(round(self.val_fraction * n))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return perm[n_val:], perm[:n_val]

    def held_out_paths(self) -> torch.Tensor:
        """The held-out (validation) trajectories, ordered like ``trajectory_from`` (t = 1 to t = 0,
        x1 first): (K + 1, N_val, D). Their starts x1 are known and their paths are the truth."""
        return torch.from_numpy(self._states[self._split()[1].numpy()]).float().transpose(0, 1)

    def truth_protocol(self) -> tuple[str | None, str]:
        n_val = len(self._split()[1])
        if n_val == 0:
            return None, (
                f"not computed: {self.file} holds fixed trajectories, so there is no ground truth for new starts, "
                f"and val_fraction={self.val_fraction} holds none out to judge against; set val_fraction > 0"
            )
        return "held_out", (
            f"the {n_val} held-out trajectories of {self.file} (val_fraction={self.val_fraction}, seed={self.seed}), "
            "from their own starts: the file has no ground truth for new starts"
        )

    def setup(self, stage: str | None = None) -> None:
        states, velocities = to_path_time(self._states, self._velocities, self.horizon)
        states, velocities = torch.from_numpy(states).float(), torch.from_numpy(velocities).float()
        train, val = self._split()
        # without a held-out set, validation (its loss) reads one training trajectory
        for name, idx in (("train_set", train), ("val_set", val if len(val) else train[:1])):
            s, v = states[idx], velocities[idx]
            extra = {"path": s, "path_velocity": v} if self.supervision == "path" else {}
            setattr(self, name, DictDataset(x=s[:, 0], e=s[:, -1], **extra))
