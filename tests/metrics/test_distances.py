import math

import pytest
import torch

from mmf_lightning.metrics import sliced_wasserstein


def test_shifted_gaussians_have_the_closed_form_distance():
    """For N(0, I) and N(m, I) in D dims, SW2^2 = E[(theta . m)^2] = |m|^2 / D."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, 4, generator=g)
    m = torch.tensor([1.0, -2.0, 0.5, 0.0])
    b = torch.randn(20_000, 4, generator=g) + m
    sw = sliced_wasserstein(a, b, num_projections=1000, generator=g)
    assert sw == pytest.approx(m.norm().item() / math.sqrt(4), rel=0.05)
    assert sliced_wasserstein(a, a.clone(), generator=g) == 0.0


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r"got \(10, 2\) and \(12, 2\)"):
        sliced_wasserstein(torch.zeros(10, 2), torch.zeros(12, 2))


def test_energy_distance_is_the_square_of_scipys_in_one_dimension():
    """scipy.stats.energy_distance is sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|) in 1-D."""
    from scipy.stats import energy_distance as scipy_energy

    from mmf_lightning.metrics.distances import energy_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(700, 1, generator=g), torch.randn(500, 1, generator=g) * 1.5 + 0.3
    expected = scipy_energy(a[:, 0].numpy(), b[:, 0].numpy()) ** 2
    assert energy_distance(a, b, chunk=128) == pytest.approx(expected, rel=1e-9)
    assert energy_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"got \(10, 2\) and \(12, 3\)"):
        energy_distance(torch.zeros(10, 2), torch.zeros(12, 3))


def test_float64_keeps_values_and_device():
    from mmf_lightning.metrics.ranks import float64

    x = torch.tensor([1 / 3, 2.5, -7.0], dtype=torch.float32)
    y = float64(x)
    assert y.dtype == torch.float64 and y.device == x.device
    assert y.tolist() == [float(v) for v in x.tolist()]  # widening is exact
