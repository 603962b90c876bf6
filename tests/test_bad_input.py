"""Bad input, systematically (hypothesis): schedules, model and data settings, sample counts and
steps, and values given on the command line. Every case either is valid (and behaves) or ends in
a ValueError / one-line CLI error that names the bad value; never a traceback from inside torch,
never a run that trains on garbage. Each property tries MAX = 60 examples (the command line 20):
442 cases a run of the suite, new ones each run (hypothesis keeps the failures it found)."""

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmf_lightning.commands.fit import MMFLightningCLI
from mmf_lightning.data import ODEDataModule, ToyDataModule
from mmf_lightning.metrics.evaluation import EvaluationSettings
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import Constant, CosineWarmup, LinearWarmup, ModularMeanFlow, Step, TimeSampler
from mmf_lightning.training.module import MeanFlowModule

ROOT = Path(__file__).resolve().parents[1]
MAX = 60
FAST = settings(max_examples=MAX, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# numbers as a config file or the command line can hold them: any float (NaN and infinities too), any int
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6))


def names_it(err: BaseException, *values) -> bool:
    """The message shows the bad value (as the user wrote it, or as Python prints it)."""
    text = str(err)
    return any(str(v) in text or repr(v) in text for v in values)


@FAST
@given(value=NUMBERS)
def test_constant_lambda_is_in_the_unit_interval_or_named(value):
    try:
        schedule = Constant(value)
    except ValueError as err:
        assert not 0.0 <= value <= 1.0 and names_it(err, value)
        return
    assert 0.0 <= schedule(0) <= 1.0 and schedule(10**9) == schedule(0)


@FAST
@given(kind=st.sampled_from([LinearWarmup, CosineWarmup]), warmup=NUMBERS, start=NUMBERS, end=NUMBERS,
       step=st.integers(0, 10**9))  # fmt: skip
def test_warmup_schedules_stay_in_the_unit_interval_or_name_the_value(kind, warmup, start, end, step):
    try:
        schedule = kind(warmup, start, end)
    except (ValueError, TypeError) as err:
        assert names_it(err, warmup, start, end)
        return
    lam = schedule(step)
    assert math.isfinite(lam) and min(start, end) - 1e-12 <= lam <= max(start, end) + 1e-12


@FAST
@given(milestones=st.lists(st.integers(-5, 50), max_size=4), values=st.lists(NUMBERS, max_size=5),
       step=st.integers(0, 100))  # fmt: skip
def test_step_schedules_are_valid_or_named(milestones, values, step):
    try:
        schedule = Step(milestones, values)
    except ValueError as err:
        assert names_it(err, milestones, len(values), *values, *milestones)
        return
    assert schedule(step) in schedule.values


def _net():
    return MLP(dim=2, width=8, depth=1, time_dim=8)


def _objective():
    return ModularMeanFlow(tangent="instantaneous", time_sampler=TimeSampler("uniform", equal_fraction=0.25))


@FAST
@given(lr=NUMBERS, min_lr=NUMBERS, warmup=NUMBERS, window=NUMBERS, skipped=NUMBERS)
def test_module_settings_are_valid_or_named(lr, min_lr, warmup, window, skipped):
    kwargs = dict(lr=lr, min_lr=min_lr, lr_warmup_steps=warmup, loss_var_window=window, max_skipped_in_a_row=skipped)
    try:
        MeanFlowModule(_net(), _objective(), **kwargs)
    except (ValueError, TypeError) as err:
        assert names_it(err, *kwargs.values())
        return
    assert math.isfinite(lr) and lr > 0 and 0 <= min_lr <= lr and warmup >= 0 and window >= 2 and skipped >= 0


MODULE = MeanFlowModule(_net(), _objective())


@FAST
@given(n=st.integers(-3, 3), steps=st.integers(-3, 3))
def test_impossible_sample_counts_and_steps_are_named(n, steps):
    try:
        x = MODULE.sample(n, steps, generator=torch.Generator().manual_seed(0))
    except ValueError as err:
        assert (n < 1 or steps < 1) and names_it(err, n if n < 1 else steps)
        return
    assert x.shape == (n, 2) and torch.isfinite(x).all()


@FAST
@given(num_samples=NUMBERS, steps=NUMBERS, batch_size=NUMBERS, distance_samples=NUMBERS)
def test_evaluation_settings_are_valid_or_named(num_samples, steps, batch_size, distance_samples):
    try:
        EvaluationSettings(num_samples, steps, batch_size, 0, distance_samples, 0)
    except (ValueError, TypeError) as err:
        assert names_it(err, num_samples, steps, batch_size, distance_samples)


SIZES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 4096))  # (valid ones stay cheap)


@FAST
@given(num_train=SIZES, batch_size=SIZES)
def test_toy_data_sizes_are_valid_or_named(num_train, batch_size):
    try:
        dm = ToyDataModule("checkerboard", num_train=num_train, num_val=8, batch_size=batch_size)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
    except (ValueError, TypeError) as err:
        assert names_it(err, num_train, batch_size)
        return
    assert batch["x"].shape[0] == batch_size and torch.isfinite(batch["x"]).all()


# the command line: values as text, as a user types them
TEXT = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e999", "abc", "[1, 2]", "{}", "null", "true", "", "1e-3"]),
    st.floats(allow_nan=False).map(str),
)
OPTIONS = ["model.lr", "model.min_lr", "model.loss_var_window", "data.init_args.batch_size",
           "data.init_args.num_train", "lambda_schedule.schedule.init_args.warmup_steps",
           "model.objective.init_args.time_sampler.init_args.equal_fraction"]  # fmt: skip


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(OPTIONS), text=TEXT)
def test_command_line_values_are_valid_or_named_in_one_line(option, text):
    """The quickstart with one option set to ``text``: either the CLI builds the run (and the value
    is a valid one), or it stops with an error naming the option or the value."""
    args = ["--config", str(ROOT / "configs/quickstart.yaml"), f"--{option}={text}", "--trainer.logger=false"]
    try:
        cli = MMFLightningCLI(args=args, run=False)
    except SystemExit as err:  # jsonargparse: a value of the wrong type, printed as a usage error
        assert err.code == 2
        return
    except (ValueError, TypeError) as err:
        assert names_it(err, text, option.rsplit(".", 1)[-1]) or text in str(err), str(err)
        return
    value = cli.config
    for part in option.split("."):
        value = value[part]
    assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, (option, text, value)


@pytest.mark.parametrize("data", [[], [[float("nan"), 0.0]]], ids=["empty", "nan"])
def test_empty_or_nan_trajectory_files_are_named(tmp_path, data):
    import numpy as np

    from mmf_lightning.data import NpzTrajectoryDataModule

    path = tmp_path / "t.npz"
    states = np.asarray(data, dtype=np.float32).reshape(len(data), 1, -1) if data else np.zeros((0, 2, 2))
    if data:
        states = np.repeat(states, 3, axis=1)
    np.savez(path, states=states)
    with pytest.raises(ValueError) as err:
        NpzTrajectoryDataModule(file=str(path)).setup("fit")
    assert str(path) in str(err.value) or "t.npz" in str(err.value)


def _constructor_options(config: str) -> list[str]:
    """Every scalar constructor argument of a config's groups (the model and its net, objective and time sampler,
    the data, the lambda schedule), as command-line keys."""
    from helpers import ParseOnly

    cfg = ParseOnly(args=["fit", "--config", str(ROOT / config)]).config["fit"]
    keys = []

    def walk(node, prefix):
        for key, value in node.items():
            if key == "__path__":
                continue
            if hasattr(value, "items"):
                walk(value, f"{prefix}.{key}")
            elif isinstance(value, bool | int | float | str) or value is None:
                keys.append(f"{prefix}.{key}")

    for group in ("model", "data", "lambda_schedule"):
        walk(cfg[group], group)
    return [k for k in keys if not k.endswith(".class_path")]


QUICKSTART_OPTIONS = _constructor_options("configs/quickstart.yaml")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(option=st.sampled_from(QUICKSTART_OPTIONS), text=TEXT)
def test_the_cli_names_every_bad_constructor_value_in_one_line(option, text, monkeypatch, capsys):
    """Through the command line (`commands.main`, up to the run's objects; the training itself is left out): any
    value for any constructor argument of the quickstart's groups is taken, or ends in one line naming the option
    or the value with exit status 2, never in a traceback."""
    from mmf_lightning.commands import main

    monkeypatch.setattr(MMFLightningCLI, "_run_subcommand", lambda self, subcommand: None)
    args = ["fit", "--config", str(ROOT / "configs/quickstart.yaml"), f"--{option}={text}", "--trainer.logger=false"]
    capsys.readouterr()
    try:
        main(args)
    except SystemExit as err:
        lines = capsys.readouterr().err.strip().splitlines()
        assert err.code == 2 and lines, lines
        assert lines[-1].startswith("error: ") and "Traceback" not in "\n".join(lines), lines
        assert option.rsplit(".", 1)[-1] in lines[-1] or text.strip() in lines[-1], (option, text, lines[-1])


def test_every_config_group_has_options_in_the_fuzz():
    groups = {o.split(".")[0] for o in QUICKSTART_OPTIONS}
    assert groups == {"model", "data", "lambda_schedule"}
    assert {"model.net.init_args.width", "model.objective.init_args.tangent", "data.init_args.batch_size",
            "model.objective.init_args.time_sampler.init_args.equal_fraction"} <= set(QUICKSTART_OPTIONS)  # fmt: skip


@pytest.mark.parametrize("seed", [None, 1.5, -1, True])
def test_a_data_seed_that_is_not_a_whole_number_is_named(seed):
    """The seed of the 2-D and trajectory data (it seeds every set they draw): `seed: null` was taken, then failed as
    "unsupported operand type(s) for +: 'NoneType' and 'int'" (found by the fuzz below)."""
    for make in (ToyDataModule, ODEDataModule):
        with pytest.raises(ValueError, match=rf"seed must be a whole number in \[0, 1e\+12\], got {seed!r}"):
            make(seed=seed)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--data.init_args.batch_size=0"], "error: batch_size must be a whole number in [1, 1e+12], got 0"),
        (
            [
                "--lambda_schedule.schedule=mmf_lightning.objectives.Constant",
                "--lambda_schedule.schedule.init_args.value=2",
            ],
            "error: Constant lambda value must be in [0, 1], got 2.0",
        ),
        (["--model.lr=abc"], "error: Parser key \"model.lr\": Expected a <class 'float'>. Got value: abc; see"),
        (["--trainer.max_step=100"], "error: unrecognized arguments: --trainer.max_step=100; see"),
        (["--model.net.init_args.dim=3"], "error: the network expects data of shape (3,) but the datamodule"),
    ],
    ids=["constructor", "schedule", "type", "abbreviation", "setup"],
)
def test_the_real_command_line_ends_a_fixable_error_in_one_line(tmp_path, extra, expected):
    """`python -m mmf_lightning fit` in a process of its own: exit 2, the error on the last line of stderr, no usage
    and no traceback before it; an abbreviation of an option is refused, not taken."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "mmf_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"), *extra]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), lines[-1]
    assert not any(line.startswith(("usage:", "Traceback")) for line in lines), lines
    assert not list(tmp_path.rglob("version_*")) and not list(tmp_path.rglob("config.yaml"))  # no run folder
