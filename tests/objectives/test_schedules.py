import math

import pytest

from mmf_lightning.objectives import Constant, CosineWarmup, LinearWarmup, Step


def test_linear_warmup_is_paper_eq_12():
    s = LinearWarmup(100)
    assert [s(k) for k in (0, 25, 50, 100, 1000)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert LinearWarmup(0)(0) == 1.0


def test_cosine_and_step_and_constant():
    c = CosineWarmup(100)
    assert c(0) == 0.0 and math.isclose(c(50), 0.5) and c(100) == 1.0 and c(30) < 0.3
    s = Step([10, 20], [0.0, 0.5, 1.0])
    assert [s(k) for k in (0, 9, 10, 19, 20, 99)] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert Constant(0.3)(12345) == 0.3


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Constant(1.2), r"Constant lambda value must be in \[0, 1\], got 1.2"),
        (lambda: LinearWarmup(-5), "warmup_steps must be a whole number of steps in \\[0, 1e\\+12\\], got -5"),
        (lambda: LinearWarmup(10, start=-0.5), r"LinearWarmup start must be in \[0, 1\], got -0.5"),
        (lambda: Step([10, 5], [0, 0.5, 1]), "milestones must be distinct, increasing"),
        (lambda: Step([10], [0, 0.5, 1]), "one more value than milestones"),
        (lambda: Step([10], [0, 2.0]), r"Step value must be in \[0, 1\], got 2.0"),
    ],
)
def test_impossible_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()
