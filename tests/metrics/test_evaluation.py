"""The path metrics against closed forms and independent computations; block seeding; LPIPS."""

import pytest
import torch
import torchvision

from mmf_lightning import MeanFlowModule
from mmf_lightning.metrics.evaluation import EvaluationSettings, evaluate_model, lpips_diversity, path_metrics
from mmf_lightning.metrics.lpips import LPIPS
from mmf_lightning.metrics.ranks import Ranks, Sums
from mmf_lightning.metrics.weights import WeightsMissing
from mmf_lightning.nets import MLP
from mmf_lightning.nets.gaussian import GaussianAverageVelocity
from mmf_lightning.objectives import ModularMeanFlow


def _gaussian_module(mu, sigma):
    return MeanFlowModule(GaussianAverageVelocity(mu, sigma), ModularMeanFlow()).eval()


def test_exact_flow_map_has_no_one_step_error_or_path_deviation_and_the_closed_form_smoothness():
    """With the exact u every jump lands on the true flow: x_hat_k are all one point. The path
    is z_t = (1 - t) mu + s_t e, so its second difference is (s_{k+1} - 2 s_k + s_{k-1}) e and
    the smoothness is mean_d (d2 s_d)^2 e_d^2, in expectation mean_d (d2 s_d)^2."""
    mu, sigma = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 1.0, 2.5])
    module, steps = _gaussian_module(mu, sigma), 8
    e = torch.randn(20_000, 3, generator=torch.Generator().manual_seed(1))
    out = path_metrics(module, e, None, steps)
    assert out["one_step_error"].max() < 1e-10 and out["d_path"].max() < 1e-10
    t = torch.linspace(1, 0, steps + 1)[:, None].double()
    s = torch.sqrt((1 - t) ** 2 * sigma.double() ** 2 + t**2)  # (K + 1, D)
    d2 = s[2:] - 2 * s[1:-1] + s[:-2]
    expected = (d2**2).mean(1).mean()  # E[e_d^2] = 1
    assert out["smoothness"].mean().item() == pytest.approx(expected.item(), rel=0.03)
    assert expected > 1e-4  # the Gaussian path is curved: the check has something to find


def test_path_metrics_match_a_direct_computation_with_the_network():
    torch.manual_seed(0)
    module = MeanFlowModule(MLP(dim=2, width=32, depth=2), ModularMeanFlow()).eval()
    e, steps = torch.randn(50, 2), 4
    out = path_metrics(module, e, None, steps)
    with torch.no_grad():
        u = lambda z, r, t: module.net(z, torch.full((50,), r), torch.full((50,), t))  # noqa: E731
        grid = [1 - k / steps for k in range(steps + 1)]
        z = [e]
        for k in range(steps):
            z.append(z[-1] - (grid[k] - grid[k + 1]) * u(z[-1], grid[k + 1], grid[k]))
        x_hat = [z[k] - grid[k] * u(z[k], 0.0, grid[k]) for k in range(steps)]
    end = z[-1]
    mse = lambda a: a.double().square().mean(1)  # noqa: E731
    torch.testing.assert_close(out["one_step_error"], mse(x_hat[0] - end))
    torch.testing.assert_close(out["d_path"], torch.stack([mse(x - end) for x in x_hat]).mean(0))
    second = [mse(z[k + 1] - 2 * z[k] + z[k - 1]) for k in range(1, steps)]
    torch.testing.assert_close(out["smoothness"], torch.stack(second).mean(0))
    assert out["one_step_error"].mean() > 1e-6  # an untrained net is no flow map


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_blocks_split_the_samples_exactly_once(world_size):
    blocks = [b for r in range(world_size) for b in Ranks(r, world_size).blocks(1030, 100)]
    assert sorted(blocks) == [(b, 100) for b in range(10)] + [(10, 30)]


def test_sums_over_simulated_ranks_equal_one_process():
    """Two 'ranks' whose all_sum adds the other's totals give the mean and std of all values."""
    values = torch.randn(101, dtype=torch.float64)
    parts = [Sums(), Sums()]
    parts[0].add("m", values[:40])
    parts[1].add("m", values[40:])
    other = [parts[1].totals["m"], parts[0].totals["m"]]
    for r in (0, 1):
        out = parts[r].reduce(Ranks(r, 2, lambda t, r=r: t + other[r][None]), ["m"], "cpu")["m"]
        assert out["n"] == 101
        assert out["mean"] == pytest.approx(values.mean().item(), rel=1e-12)
        assert out["std"] == pytest.approx(values.std().item(), rel=1e-9)


def test_evaluate_model_is_the_same_for_any_block_size_split(tmp_path):
    """Ranks are block owners: simulating 2 ranks by hand and adding their sums gives the
    1-rank numbers (the DDP test in test_cli.py runs it with real processes)."""
    torch.manual_seed(0)
    module = MeanFlowModule(MLP(dim=2, width=32, depth=2), ModularMeanFlow()).eval()  # no flow map: errors > 0
    settings = EvaluationSettings(num_samples=300, steps=4, batch_size=64, distance_samples=200, timing_repeats=0)
    one = evaluate_model(module, object(), settings)
    totals = []
    for r in (0, 1):
        sums_seen = {}

        def capture(t, sums_seen=sums_seen):
            sums_seen["t"] = t.clone()
            return t

        evaluate_model(module, object(), settings, Ranks(r, 2, capture))
        totals.append(sums_seen["t"])
    total = (totals[0] + totals[1])[:, 0] / (totals[0] + totals[1])[:, 2]
    assert [one[k] for k in ("one_step_error", "d_path", "smoothness")] == pytest.approx(total.tolist(), rel=1e-12)
    assert one["one_step_error"] > 1e-6 and "sw_1step" not in one  # no reference_samples: no distances


def test_lpips_loads_torchvisions_alexnet_keys_into_its_slices(torch_home_with_alexnet, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))
    lpips = LPIPS()
    backbone = torchvision.models.alexnet()
    backbone.load_state_dict(torch.load(next(torch_home_with_alexnet.rglob("alexnet-*.pth"))))
    loaded = dict(lpips.net.net.named_parameters())
    assert len(loaded) == 10  # five convolutions
    for name, value in loaded.items():  # "slice5.10.bias" is torchvision's "features.10.bias"
        assert torch.equal(value, backbone.state_dict()["features." + name.split(".", 1)[1]]), name
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(6, 1, 8, 8, generator=g) * 2 - 1 for _ in range(2))  # digits-sized, grey
    d = lpips(a, b)
    assert d.shape == (6,) and (d > 0).all()
    torch.testing.assert_close(lpips(b, a), d)
    assert lpips(a, a).abs().max() < 1e-6


def test_lpips_without_weights_names_the_file_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(
        WeightsMissing, match=r"alexnet-owt-7be5be79.pth are missing.*download-weights.*lpips_weights_path"
    ):
        LPIPS()
    with pytest.raises(WeightsMissing, match=f"at the configured path {tmp_path / 'x.pth'}"):
        LPIPS(str(tmp_path / "x.pth"))


def test_lpips_diversity_pairs_two_starts_per_sample(torch_home_with_alexnet, monkeypatch):
    """Same generator state -> same pairs; a model that ignores its input has zero diversity."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))
    lpips = LPIPS()

    class Constant(torch.nn.Module):  # u = z - c: every start jumps to the image c
        data_shape, num_classes = (1, 8, 8), None

        def forward(self, z, r, t, y=None):
            return z - torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)

    class Identity(Constant):  # u = 0: every start is its own sample
        def forward(self, z, r, t, y=None):
            return torch.zeros_like(z)

    constant = MeanFlowModule(Constant(), ModularMeanFlow()).eval()
    assert lpips_diversity(constant, lpips, 5, torch.Generator().manual_seed(3)).abs().max() < 1e-6
    identity = MeanFlowModule(Identity(), ModularMeanFlow()).eval()
    d = lpips_diversity(identity, lpips, 5, torch.Generator().manual_seed(3))
    assert (d > 1e-3).all()
    torch.testing.assert_close(lpips_diversity(identity, lpips, 5, torch.Generator().manual_seed(3)), d)


def test_our_lpips_is_the_lpips_packages_own_call(torch_home_with_alexnet, monkeypatch):
    """On RGB images in [-1, 1] of at least 32 px, ours is the package's own LPIPS(net="alex"), whose backbone comes
    through torchvision's loader from the same hub cache (the stand-in AlexNet file; nothing downloads)."""
    import warnings

    import lpips as lpips_package

    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_alexnet))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        theirs = lpips_package.LPIPS(net="alex", verbose=False).eval()
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(4, 3, 40, 40, generator=g) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        torch.testing.assert_close(LPIPS()(a, b), theirs(a, b).flatten())
