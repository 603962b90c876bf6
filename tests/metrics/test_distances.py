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
