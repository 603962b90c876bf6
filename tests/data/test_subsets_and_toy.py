import pytest
import torch

from mmf_lightning.data import ToyDataModule
from mmf_lightning.data.subsets import balanced_subset
from mmf_lightning.sources import Named, StandardNormal, UniformBox
from mmf_lightning.sources.distributions import DISTRIBUTIONS, sample_distribution


def test_balanced_subset_is_deterministic_and_balanced():
    labels = torch.arange(1000) % 10
    a, b = balanced_subset(labels, 0.1, seed=3), balanced_subset(labels, 0.1, seed=3)
    assert torch.equal(a, b)
    assert torch.bincount(labels[a]).tolist() == [10] * 10
    assert not torch.equal(a, balanced_subset(labels, 0.1, seed=4))
    assert balanced_subset(labels, 0.001).numel() == 10  # at least one per class
    assert torch.equal(balanced_subset(labels, 1.0), torch.arange(1000))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_subset_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match=rf"subset fraction must be in \(0, 1\], got {fraction}"):
        balanced_subset(torch.arange(10), fraction)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_distributions_shapes_ranges_and_seeds(name):
    a = sample_distribution(name, 5000, torch.Generator().manual_seed(0))
    b = sample_distribution(name, 5000, torch.Generator().manual_seed(0))
    assert a.shape == (5000, 2) and torch.equal(a, b)
    assert a.abs().max() < 3.5 and a.std(0).min() > 0.3


def test_checkerboard_occupies_only_dark_squares():
    x = sample_distribution("checkerboard", 20_000, torch.Generator().manual_seed(0))
    squares = torch.floor(x[:, 0]).long() + torch.floor(x[:, 1]).long()
    assert (squares % 2 == 0).all()


def test_gaussian_and_toy_datamodule():
    dm = ToyDataModule("gaussian", num_train=20_000, num_val=100, mean=(1.0, -2.0, 0.5), std=(0.5, 2.0, 1.0))
    assert dm.data_shape == (3,)
    dm.setup()
    x = dm.train_set.tensors["x"]
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -2.0, 0.5]), atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([0.5, 2.0, 1.0]), atol=0, rtol=0.03)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x"} and batch["x"].shape == (256, 3)
    with pytest.raises(ValueError, match="unknown distribution 'swiss'"):
        ToyDataModule("swiss")


def test_sources():
    assert StandardNormal().sample(4, (3, 2)).shape == (4, 3, 2)
    box = UniformBox(-2, 1).sample(10_000, (2,))
    assert box.min() >= -2 and box.max() <= 1
    moons = Named("moons").sample(8, (2,))
    assert moons.shape == (8, 2)
    with pytest.raises(ValueError, match=r"draws shape \(2,\), the data has \(3,\)"):
        Named("moons").sample(8, (3,))
    assert Named("moons") == Named("moons") and Named("moons") != Named("circles")


def test_labelled_toys_keep_their_points_and_label_each_by_its_component():
    plain, labelled = (
        ToyDataModule("eight_gaussians", 4000, 10),
        ToyDataModule("eight_gaussians", 4000, 10, labels=True),
    )
    plain.setup(), labelled.setup()
    x, y = labelled.train_set.tensors["x"], labelled.train_set.tensors["y"]
    assert torch.equal(x, plain.train_set.tensors["x"]) and labelled.num_classes == 8 and plain.num_classes is None
    angle = torch.atan2(x[:, 1], x[:, 0]) % (2 * torch.pi)  # component k sits at angle k pi / 4
    assert torch.equal(torch.round(angle / (torch.pi / 4)).long() % 8, y)
    assert set(labelled.train_dataloader().__iter__().__next__()) == {"x", "y"}
    moons = ToyDataModule("moons", 4000, 10, labels=True)
    moons.setup()
    x, y = moons.train_set.tensors["x"], moons.train_set.tensors["y"]
    assert moons.num_classes == 2 and x[y == 0, 1].mean() > x[y == 1, 1].mean() + 0.5  # 0: the upper half circle
    with pytest.raises(ValueError, match=r"labels: 'checkerboard' has no class labels; choose one of"):
        ToyDataModule("checkerboard", labels=True)
