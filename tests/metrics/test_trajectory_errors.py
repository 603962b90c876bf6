import pytest
import torch

from mmf_lightning.metrics import trajectory_errors


def test_trajectory_errors():
    truth = torch.zeros(5, 3, 2)
    pred = truth.clone()
    pred[2, 0] = torch.tensor([3.0, 4.0])  # one state off by 5
    pred[-1, :, 0] = 1.0  # every end point off by 1
    errors = trajectory_errors(pred, truth)
    assert errors["max_path_error"] == 5.0 and errors["end_error"] == 1.0
    assert errors["path_error"] == pytest.approx((5.0 + 3 * 1.0) / 15)
    with pytest.raises(ValueError, match="of one shape"):
        trajectory_errors(pred, truth[:4])
