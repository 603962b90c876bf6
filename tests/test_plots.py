"""The paper's figures from folders of real runs (tests/paper_runs.py): what each draws is checked
against the runs' own files (metrics.csv, evaluation.json, checkpoints) read independently, and
against the closed-form gradient flow; the `plot` command writes them and names what it skips."""

import csv
import json
import math

import pytest
import torch
from matplotlib.quiver import Quiver

from mmf_lightning import MeanFlowModule
from mmf_lightning.commands import main
from mmf_lightning.commands import plot as plot_command
from mmf_lightning.runs import figures, find_runs


def logged(folder, key: str) -> list[float]:
    with open(folder / "metrics.csv", newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_runs_are_labelled_by_what_their_configs_change(paper_runs):
    runs = find_runs(paper_runs["toy2d"])
    assert [r.label for r in runs] == ["λ=0", "λ=1", "curriculum (linear, 6 steps)"]
    digits = find_runs(paper_runs["digits"])
    assert [r.facets for r in digits] == [
        {"data": f"{p}% data", "lambda": schedule}
        for p in (50, 100)
        for schedule in ("λ=0", "curriculum (linear, 1000 steps)")
    ]
    with pytest.raises(FileNotFoundError, match="no runs under"):
        find_runs(paper_runs["toy2d"] / "toy2d" / "curriculum" / "version_0" / "checkpoints")


def test_smoothing_is_a_debiased_moving_average():
    assert figures.smooth([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])  # no pull towards 0
    assert figures.smooth([0.0, 1.0], 0.5) == pytest.approx([0.0, 0.5 / 0.75])
    assert figures.smooth([1.0, 5.0], 0.0) == [1.0, 5.0]


def test_loss_curves_draw_each_runs_logged_loss_and_lambda(paper_runs):
    runs = find_runs(paper_runs["toy2d"])
    fig = figures.loss_curves(runs, smoothing=0.9)
    smoothed, raw, lam = fig.axes[:3]
    for run, line in zip(runs, raw.get_lines()):
        assert list(line.get_ydata()) == pytest.approx(logged(run.folder, "train/loss"))
        assert line.get_label() == run.label
    assert list(smoothed.get_lines()[0].get_ydata()) == pytest.approx(
        figures.smooth(logged(runs[0].folder, "train/loss"), 0.9)
    )
    lambdas = [list(line.get_ydata()) for line in lam.get_lines()]
    assert set(lambdas[0]) == {0.0} and set(lambdas[1]) == {1.0}
    assert lambdas[2][0] == 0.0 and lambdas[2][-1] == 1.0  # the curriculum's warm-up, 6 of the 8 steps


def test_velocity_fields_are_the_checkpoints_jumps(paper_runs):
    runs = find_runs(paper_runs["toy2d"])[:2]
    fig = figures.velocity_fields(runs, grid=5, extent=2.0, r=0.0, t=1.0)
    for run, ax in zip(runs, [a for a in fig.axes if a.get_title()]):
        (quiver,) = [c for c in ax.collections if isinstance(c, Quiver)]
        module = MeanFlowModule.load_from_checkpoint(run.folder / "checkpoints" / "last.ckpt", map_location="cpu")
        line = torch.linspace(-2.0, 2.0, 5)
        z = torch.stack(torch.meshgrid(line, line, indexing="xy"), -1).reshape(-1, 2)
        with torch.no_grad():
            jump = -module.eval().average_velocity(z, 0.0, 1.0)
        assert torch.tensor(quiver.XY).float() == pytest.approx(z)
        assert torch.tensor(quiver.U).float() == pytest.approx(jump[:, 0], abs=1e-6)
        assert torch.tensor(quiver.V).float() == pytest.approx(jump[:, 1], abs=1e-6)


def test_fid_figure_compares_the_validation_and_evaluation_fids(paper_runs):
    folder = paper_runs["digits"]
    runs = find_runs(folder)
    fig = figures.fid_comparison(runs, [folder])
    by_fraction, by_set = fig.axes[:2]
    # (a): a bar per method in each data fraction: the run's last validation FID
    expected = sorted(logged(run.folder, "val/fid_1step")[-1] for run in runs)
    assert sorted(p.get_height() for p in by_fraction.patches) == pytest.approx(expected)
    assert [t.get_text() for t in by_fraction.get_xticklabels()] == ["50% data", "100% data"]
    # (b): a bar per run on the shifted set: what `evaluate --data` wrote
    (report,) = folder.rglob("evaluation.json")
    fids = sorted(r["metrics"]["fid_1step"] for r in json.loads(report.read_text())["runs"].values())
    assert sorted(p.get_height() for p in by_set.patches) == pytest.approx(fids)
    assert [t.get_text() for t in by_set.get_xticklabels()] == ["data_shift_digits_gaussian_noise"]


def test_trajectory_figure_draws_the_closed_form_truth_and_each_runs_reconstruction(paper_runs):
    runs = find_runs(paper_runs["trajectories"])
    fig = figures.trajectory_reconstructions(runs, num=3, seed=0)
    (ode,) = [ax for ax in fig.axes if ax.get_title() == "ODEDataModule gradient_flow"]
    dashed = [line for line in ode.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata())]
    truth = torch.tensor([[line.get_xdata(), line.get_ydata()] for line in dashed]).permute(2, 0, 1)  # (K + 1, 3, 2)
    # the gradient flow of V = |x|^2 / 2 over a horizon of 1: x(s) = x1 e^{-s}
    s = torch.linspace(0.0, 1.0, truth.shape[0])[:, None, None]
    assert truth.float() == pytest.approx(truth[0].float() * torch.exp(-s), abs=1e-4)
    ode_runs = [r for r in runs if r.config["data"]["class_path"].endswith("ODEDataModule")]
    solid = [line for line in ode.get_lines() if line.get_linestyle() == "-" and len(line.get_xdata())]
    assert len(solid) == 3 * len(ode_runs) == 6
    module = MeanFlowModule.load_from_checkpoint(ode_runs[0].folder / "checkpoints" / "last.ckpt", map_location="cpu")
    path = module.eval().trajectory_from(truth[0].float(), truth.shape[0] - 1)
    drawn = torch.tensor([[line.get_xdata(), line.get_ydata()] for line in solid[:3]]).permute(2, 0, 1)
    assert drawn.float() == pytest.approx(path, abs=1e-5)
    assert {t.get_text() for t in ode.get_legend().get_texts()} >= {
        "ground truth",
        "λ=0",
        "curriculum (linear, 1000 steps)",
    }


def test_diversity_boxes_are_the_distances_between_seeds(paper_runs):
    runs = find_runs(paper_runs["toy2d"])
    fig = figures.diversity_and_stability(runs, num_pairs=50, seed=3)
    distances = figures.pair_distances(runs[0], 50, 3)
    medians = [line for line in fig.axes[0].get_lines() if line.get_color() not in ("black", "k")]
    assert medians[0].get_ydata()[0] == pytest.approx(distances.quantile(0.5).item(), rel=1e-5)
    g = torch.Generator().manual_seed(3)
    module = runs[0].load_module()
    a, b = module.sample(50, 1, generator=g), module.sample(50, 1, generator=g)
    assert distances == pytest.approx((a - b).norm(dim=1))


def test_sample_figures_are_drawn_at_every_validation(paper_runs):
    for run in find_runs(paper_runs["trajectories"]):
        assert sorted(p.name for p in (run.folder / "samples").iterdir()) == ["step_4.png", "step_8.png"]


def test_plot_command_writes_every_figure_that_applies_and_names_what_it_skips(paper_runs, tmp_path, capsys):
    main(["plot", str(paper_runs["toy2d"]), "--output", str(tmp_path)])
    out = capsys.readouterr().out
    names = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert names == sorted(set(figures.FIGURES) - {"trajectories"})
    assert list(figures.FIGURES) == list(plot_command.FIGURES)  # every figure drawn is described, and the reverse
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in tmp_path.glob("*.png"))
    assert "skipped trajectories:" in out and "not a trajectory task" in out
    assert "λ=0" in out and "curriculum (linear, 6 steps)" in out

    with pytest.raises(SystemExit) as exit_:
        main(["plot", str(paper_runs["digits"]), "--figure", "velocity-fields", "--output", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "needs 2-D data" in capsys.readouterr().err and not (tmp_path / "x" / "velocity-fields.png").exists()
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "nowhere")])
    assert "does not exist" in capsys.readouterr().err


def test_paths_figure_draws_each_runs_sampling_path_and_d_path(paper_runs):
    runs = find_runs(paper_runs["toy2d"])
    fig = figures.paths(runs, steps=4, num=5, seed=1)
    first = fig.axes[0]
    module = runs[0].load_module()
    e, _ = module.draw_starts(5, None, torch.Generator().manual_seed(1))
    states = module.trajectory_from(e, 4)
    drawn = [line for line in first.get_lines() if len(line.get_xdata())]
    assert torch.tensor([line.get_ydata() for line in drawn]).T.float() == pytest.approx(states[..., 1], abs=1e-6)
    d_path = [line for line in fig.axes[3].get_lines()]
    assert [list(line.get_ydata()) for line in d_path] == [logged(r.folder, "val/d_path") for r in runs]
    assert all(math.isfinite(v) for line in d_path for v in line.get_ydata())


def test_sample_figures_trajectory_panel_is_the_models_paths_from_true_starts(paper_runs):
    from types import SimpleNamespace

    from mmf_lightning.callbacks import SampleFigures

    run = next(
        r
        for r in find_runs(paper_runs["trajectories"])
        if r.config["data"]["init_args"].get("system") == "gradient_flow"
    )
    datamodule, module = run.datamodule(), run.load_module()
    truth, predicted = SampleFigures(num_trajectories=5, seed=2)._trajectories(
        SimpleNamespace(datamodule=datamodule), module
    )
    starts = datamodule.source.sample(5, (2,), torch.Generator().manual_seed(2))
    assert truth[0] == pytest.approx(starts) and truth[-1] == pytest.approx(starts * math.exp(-1.0), abs=1e-4)
    assert predicted == pytest.approx(module.trajectory_from(starts, truth.shape[0] - 1))
    toy = find_runs(paper_runs["toy2d"])[0]
    assert SampleFigures()._trajectories(SimpleNamespace(datamodule=toy.datamodule()), toy.load_module()) is None
    with pytest.raises(ValueError, match=r"num_samples >= 1.*got 0"):
        SampleFigures(num_samples=0)


def test_figures_read_at_a_glance(paper_runs):
    """Legends sit outside the data (one below the panels), velocity-field panels share one colour scale and one
    colour bar, 2-D paths are drawn over the data, a series of one or two points has markers, and long tick labels
    are wrapped instead of rotated into each other."""
    runs = find_runs(paper_runs["toy2d"])
    fig = figures.loss_curves(runs)
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes[:3])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [r.label for r in runs]
    fields = figures.velocity_fields(runs, grid=5, extent=2.0)
    quivers = [c for ax in fields.axes for c in ax.collections if isinstance(c, Quiver)]
    assert len(quivers) == len(runs) and len({q.get_clim() for q in quivers}) == 1
    assert quivers[0].get_clim()[1] == pytest.approx(max(float(q.get_array().max()) for q in quivers))
    assert len(fields.axes) == len(runs) + 1  # the panels and one colour bar
    paths = figures.paths(runs, steps=4, num=5, seed=1)
    for ax in paths.axes[: len(runs)]:
        data = [c for c in ax.collections if c.get_offsets().shape[0] == 2000]
        assert data and data[0].get_zorder() < min(line.get_zorder() for line in ax.get_lines())  # data behind
    d_path = paths.axes[len(runs)]
    assert all(line.get_marker() == "o" for line in d_path.get_lines())  # two validations: two points each
    boxes = figures.diversity_and_stability(runs, num_pairs=20, seed=0)
    labels = [t.get_text() for t in boxes.axes[0].get_xticklabels()]
    assert max(len(line) for label in labels for line in label.splitlines()) <= 18
    assert all(t.get_rotation() == 0 for t in boxes.axes[0].get_xticklabels())


def test_plot_draws_what_it_can_and_names_what_it_skips(paper_runs, tmp_path, capsys, monkeypatch):
    """Digits runs without LPIPS' weights (their configs set lpips: false): the diversity figure is skipped with the
    reason, and the figures after it are still drawn."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_weights"))
    main(["plot", str(paper_runs["digits"]), "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "skipped diversity: LPIPS' AlexNet backbone weights" in out
    assert (tmp_path / "out" / "paths.png").is_file() and (tmp_path / "out" / "fid.png").is_file()
