import torch

from mmf_lightning.objectives import TimeSampler


def test_pairs_are_ordered_and_the_equal_rows_come_first_in_the_expected_share():
    sampler = TimeSampler("logit_normal", -0.4, 1.0, equal_fraction=0.25)
    r, t, k = sampler.draw(20_000)
    assert ((0 <= r) & (r <= t) & (t <= 1)).all()
    assert (r[:k] == t[:k]).all() and (r[k:] < t[k:]).all()
    assert k in (5000, 5001)
    # a batch of 6 (1.5 rows r = t expected): 1 or 2 of them, 1.5 on average, not always the rounded 2
    counts = torch.tensor([sampler.equal_count(6) for _ in range(4000)], dtype=torch.float64)
    assert set(counts.tolist()) == {1.0, 2.0} and abs(counts.mean() - 1.5) < 0.05
    assert TimeSampler(equal_fraction=1.0).equal_count(7) == 7 and TimeSampler(equal_fraction=0.0).equal_count(7) == 0


def test_logit_normal_and_uniform_marginals():
    s = TimeSampler("logit_normal", mean=-2.0, std=2.0)
    logits = torch.logit(s.sample_t(50_000).double().clamp(1e-7, 1 - 1e-7))
    assert abs(logits.mean() + 2.0) < 0.05 and abs(logits.std() - 2.0) < 0.05
    u = TimeSampler("uniform").sample_t(50_000)
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003


def test_max_and_min_of_two_draws():
    r, t = TimeSampler("uniform", equal_fraction=0.0)(50_000)
    # max of two uniforms has mean 2/3, min has mean 1/3
    assert abs(t.mean() - 2 / 3) < 0.01 and abs(r.mean() - 1 / 3) < 0.01


def test_times_check_accepts_the_closed_bounds_and_names_the_first_pair_outside():
    import pytest

    from mmf_lightning.objectives.time_sampling import check_times

    check_times(torch.tensor([0.0, 0.3, 1.0]), torch.tensor([0.0, 0.3, 1.0]))  # r = t, at both ends
    check_times(torch.tensor([0.0]), torch.tensor([1.0]))
    for r, t, shown in [(-1e-6, 0.5, "r=-1e-06, t=0.5"), (0.2, 1 + 1e-6, "r=0.2, t=1"), (0.6, 0.5, "r=0.6, t=0.5")]:
        with pytest.raises(ValueError, match=rf"0 <= r <= t <= 1, got {shown}"):
            check_times(torch.tensor([0.1, r], dtype=torch.float64), torch.tensor([0.2, t], dtype=torch.float64))
