"""SampleFigures' panel of multi-step flow matching of the same run (issue 29: one-step samples judged at a glance)."""

import torch

from mmf_lightning.callbacks.sample_figures import euler_samples
from mmf_lightning.nets import MLP
from mmf_lightning.objectives import ModularMeanFlow
from mmf_lightning.training.module import MeanFlowModule


def test_the_euler_panel_integrates_the_instantaneous_velocity_from_the_sample_noise():
    """K Euler steps of u(z, t, t) from t = 1 to 0 on the noise ``module.sample`` starts from, written out by hand;
    the net is in eval mode for them and back in training mode after."""
    torch.manual_seed(0)
    module = MeanFlowModule(MLP(dim=2, width=32, depth=2, dropout=0.5), ModularMeanFlow())
    module.net.train()
    steps, seed = 4, 3
    got = euler_samples(module, 16, steps, seed)
    assert module.net.training
    e, _ = module.draw_starts(16, None, torch.Generator().manual_seed(seed))
    module.net.eval()  # dropout off, as for any sample
    z, times = e, torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        for t, s in zip(times[:-1], times[1:]):
            tt = torch.full((len(z),), float(t))
            z = z - (t - s) * module.net(z, tt, tt)
    torch.testing.assert_close(got, z)


def test_the_data_panel_shows_the_training_images_and_nothing_for_2d_data():
    """For images the picture starts with the data the samples are judged against: the first n training images."""
    from types import SimpleNamespace

    from mmf_lightning.callbacks.sample_figures import _data_images
    from mmf_lightning.data import DigitsDataModule, ToyDataModule

    digits = DigitsDataModule(batch_size=8)
    shown = _data_images(SimpleNamespace(datamodule=digits), 5)
    train = digits.reference_set("train")
    assert shown.shape == (5, 1, 8, 8)
    torch.testing.assert_close(shown, torch.stack([train[i]["x"] for i in range(5)]))
    assert shown.std() > 0.1  # images, not a blank panel
    assert _data_images(SimpleNamespace(datamodule=ToyDataModule(num_train=10, num_val=2)), 5) is None
