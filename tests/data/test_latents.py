"""Latent-space training: the digits encoded once by a small random autoencoder of the real interface, cached,
scaled, trained on, and decoded for FID (nothing downloads; Stable Diffusion's VAE fails fast without weights)."""

import pytest
import torch
from helpers import quiet_trainer

from mmf_lightning import MeanFlowModule
from mmf_lightning.callbacks import FID, LambdaScheduler
from mmf_lightning.data import DigitsDataModule, LatentDataModule
from mmf_lightning.metrics.digits_classifier import DigitsClassifier
from mmf_lightning.metrics.features import to_uint8
from mmf_lightning.metrics.fid import make_fid
from mmf_lightning.nets import DiT
from mmf_lightning.nets.autoencoders import ConvAutoencoder, StableDiffusionVAE
from mmf_lightning.objectives import ModularMeanFlow


def _latents(tmp_path, seed=0, **kw):
    ae = ConvAutoencoder(in_channels=1, latent_channels=2, width=8, levels=1, seed=seed)
    return LatentDataModule(DigitsDataModule(batch_size=32), ae, cache_dir=str(tmp_path / "latents"), **kw), ae


def test_images_are_encoded_once_and_scaled_to_unit_std(tmp_path, monkeypatch):
    dm, ae = _latents(tmp_path, batch_size=32)
    dm.setup("fit")
    assert dm.data_shape == (2, 4, 4) and dm.num_classes == 10
    x = torch.stack([dm.train_set[i]["x"] for i in range(len(dm.train_set))])
    assert x.shape == (len(DigitsDataModule(batch_size=32).reference_set("train")), 2, 4, 4)
    assert x.std().item() == pytest.approx(1.0, rel=1e-4)
    images = torch.stack([dm.reference_set("train")[i]["x"] for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(x[:3], ae.encode(images) * dm.scale)  # the latents of the unflipped images
    files = sorted((tmp_path / "latents").glob("*.pt"))
    assert len(files) == 2 and not list((tmp_path / "latents").glob("*.partial"))  # train and val

    again, ae2 = _latents(tmp_path, batch_size=32)
    monkeypatch.setattr(ae2, "encode", lambda x: pytest.fail("encoded again"))
    again.setup("fit")  # read from the cache
    assert again.scale == dm.scale
    other, _ = _latents(tmp_path, seed=1, batch_size=32, scale=0.5)
    other.setup("fit")  # another autoencoder: its own files, and the fixed scale
    assert len(list((tmp_path / "latents").glob("*.pt"))) == 4 and other.scale == 0.5


def test_decode_undoes_the_scale_and_gives_images(tmp_path):
    dm, ae = _latents(tmp_path, batch_size=32)
    dm.setup("fit")
    z = torch.stack([dm.val_set[i]["x"] for i in range(4)])
    with torch.no_grad():
        expected = ae.decode(z / dm.scale).clamp(-1, 1)
    torch.testing.assert_close(dm.decode(z), expected)
    assert dm.decode(z).shape == (4, 1, 8, 8)


def test_a_dit_trains_in_latent_space_and_its_fid_is_of_decoded_samples(tmp_path):
    extractor = DigitsClassifier(str(tmp_path.parent / "digits.pt"))
    dm, ae = _latents(tmp_path, batch_size=32)
    torch.manual_seed(0)
    net = DiT(in_channels=2, image_size=4, patch_size=2, width=32, depth=2, heads=2, time_dim=32, num_classes=10)
    module = MeanFlowModule(net, ModularMeanFlow("instantaneous", label_dropout=0.1), lr=1e-3)
    fid = FID(num_samples=60, steps=(1,), feature_extractor=extractor, batch_size=30, cache_dir=str(tmp_path / "fid"))
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[LambdaScheduler(), fid], val_check_interval=3,
                            num_sanity_val_steps=0, enable_checkpointing=False)  # fmt: skip
    trainer.fit(module, dm)
    logged = float(trainer.logged_metrics["val/fid_1step"])
    by_hand = make_fid(extractor)  # the same samples (same seeds and blocks), decoded to images here
    ref = dm.reference_set("train")
    by_hand.update(to_uint8(torch.stack([ref[i]["x"] for i in range(len(ref))])), real=True)
    module.eval()
    for b in range(2):  # the FID's two blocks of 30
        samples = module.sample(30, 1, generator=torch.Generator().manual_seed(b))
        assert samples.shape == (30, 2, 4, 4)
        by_hand.update(to_uint8(dm.decode(samples)), real=False)
    assert logged == pytest.approx(float(by_hand.compute()), rel=1e-5)


def test_bad_autoencoders_and_missing_vae_weights_are_named(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="the autoencoder Linear has no encode"):
        LatentDataModule(DigitsDataModule(), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="scale must be a positive number or None, got -1"):
        _latents(tmp_path, scale=-1)
    pytest.importorskip("diffusers")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="weights 'stabilityai/sd-vae-ft-ema' are not on this machine.*"
                       "huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir"):  # fmt: skip
        StableDiffusionVAE()


def test_latents_are_the_images_the_wrapped_module_trains_on_its_subset_included(tmp_path):
    """The data-fraction study in latent space: with subset_fraction=0.1 the latents are exactly the encodings of
    the image module's own training subset (its rows, its class balance), and another fraction has its own cache."""
    images = DigitsDataModule(batch_size=32, subset_fraction=0.1, random_flip=False)
    images.setup("fit")
    train = torch.stack([images.train_set[i]["x"] for i in range(len(images.train_set))])
    labels = torch.stack([images.train_set[i]["y"] for i in range(len(images.train_set))])
    ae = ConvAutoencoder(in_channels=1, latent_channels=2, width=8, levels=1, seed=0)
    dm = LatentDataModule(DigitsDataModule(batch_size=32, subset_fraction=0.1), ae, cache_dir=str(tmp_path / "l"))
    dm.setup("fit")
    assert len(dm.train_set) == len(images.train_set) == 143
    with torch.no_grad():
        torch.testing.assert_close(dm.train_set.tensors["x"], ae.encode(train) * dm.scale)
    assert torch.equal(dm.train_set.tensors["y"], labels)
    assert len(dm.val_set) == len(images.val_set)  # validation is never subset
    whole = LatentDataModule(DigitsDataModule(batch_size=32), ae, cache_dir=str(tmp_path / "l"))
    whole.setup("fit")
    assert len(whole.train_set) == len(DigitsDataModule().reference_set("train")) == 1438
    assert len(list((tmp_path / "l").glob("*train*.pt"))) == 2  # the subsets' caches are told apart


class _DeviceRecorder(torch.nn.Module):
    """The autoencoder interface, recording the device each batch of images is encoded on."""

    def __init__(self):
        super().__init__()
        self.devices = []

    def encode(self, x):
        self.devices.append(x.device)
        return torch.zeros(x.shape[0], 2, 4, 4)  # (a meta tensor holds no values to cache)

    def decode(self, z):
        return torch.zeros(z.shape[0], 1, 8, 8, device=z.device)

    def identity(self):
        return "recorder"


def test_images_are_encoded_on_the_trainers_device(tmp_path):
    """The encoding runs where the trainer trains (a GPU's hours, not a CPU's days); a stand-in trainer whose
    device is `meta` shows where the batches go (there is no GPU here), and the cached latents come back on the
    CPU."""
    from types import SimpleNamespace

    ae = _DeviceRecorder()
    dm = LatentDataModule(DigitsDataModule(batch_size=32), ae, cache_dir=str(tmp_path), encode_batch_size=512)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))
    out = dm.encoded("val")
    assert ae.devices == [torch.device("meta")] and out["z"].device == torch.device("cpu")
