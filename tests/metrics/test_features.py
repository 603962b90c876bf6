"""The image conversion every FID number goes through, against values computed by hand."""

import numpy as np
import torch

from mmf_lightning.data.images import image_transform
from mmf_lightning.metrics.features import to_uint8


def test_to_uint8_by_hand():
    # [-1, 1] -> [0, 255]: v = (x + 1) * 255 / 2, rounded half to even, clamped outside [-1, 1]
    x = torch.tensor([-1.0, 1.0, 0.0, 0.5, -0.5, 0.2, -2.0, 3.0, -0.999, 0.999])
    expected = [0, 255, 128, 191, 64, 153, 0, 255, 0, 255]
    # 0 -> 127.5 -> 128; 0.5 -> 191.25; -0.5 -> 63.75; 0.2 -> 153.0; -0.999 -> 0.1275; 0.999 -> 254.8725
    out = to_uint8(x)
    assert out.dtype == torch.uint8
    assert out.tolist() == expected


def test_to_uint8_inverts_the_data_pipeline_for_every_pixel_value():
    """Data images are uint8 u scaled to 2 u / 255 - 1 by ``image_transform``; converting back must
    give u again for all 256 values (a wrong scale or offset shifts some of them)."""
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = image_transform(train=False, random_flip=False)(torch.from_numpy(u))
    torch.testing.assert_close(x, torch.from_numpy(u).float() * 2 / 255 - 1, atol=1e-6, rtol=0)
    assert torch.equal(to_uint8(x), torch.from_numpy(u))
