"""FID: the value against an independent computation, the cache, EMA weights in validation."""

import numpy as np
import pytest
import torch
from helpers import TinyExtractor, quiet_trainer
from lightning.pytorch.callbacks import LambdaCallback
from scipy import linalg

from mmf_lightning import MeanFlowModule
from mmf_lightning.callbacks import FID, LambdaScheduler
from mmf_lightning.data import DigitsDataModule
from mmf_lightning.metrics import fid as fid_module
from mmf_lightning.metrics.digits_classifier import DigitsClassifier
from mmf_lightning.metrics.features import to_uint8
from mmf_lightning.metrics.fid import make_fid
from mmf_lightning.nets import UNet
from mmf_lightning.objectives import ModularMeanFlow


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (300, 3, 12, 12), generator=g, dtype=torch.uint8)
    fake = (real.float() * 0.7 + 40).clamp(0, 255).to(torch.uint8)
    extractor = TinyExtractor()
    fid = make_fid(extractor)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    expected = _scipy_fid(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert expected > 0.01
    assert float(fid.compute()) == pytest.approx(expected, rel=1e-4)


@pytest.fixture
def digits_extractor(tmp_path_factory):
    return DigitsClassifier(str(tmp_path_factory.getbasetemp() / "digits.pt"))  # trained once for the suite


def _digits_module():
    net = UNet(in_channels=1, image_size=8, channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(), dropout=0.0, groups=8)  # fmt: skip
    return MeanFlowModule(net, ModularMeanFlow("instantaneous"), lr=1e-3)


def test_fid_in_validation_uses_ema_weights_and_caches_the_reference(tmp_path, digits_extractor, monkeypatch):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from mmf_lightning.callbacks.sample_figures import ema_module

    cb = FID(num_samples=120, steps=(1,), feature_extractor=digits_extractor, batch_size=50,
             cache_dir=str(tmp_path / "cache"))  # fmt: skip
    module = _digits_module()
    cached_at_first_step = []
    first_step = LambdaCallback(
        on_train_start=lambda *_: cached_at_first_step.append(len(list((tmp_path / "cache").glob("*.pt"))))
    )
    trainer = quiet_trainer(tmp_path, max_steps=3,
                            callbacks=[LambdaScheduler(), EMAWeightAveraging(decay=0.5), cb, first_step],
                            val_check_interval=3, num_sanity_val_steps=0, enable_checkpointing=False)  # fmt: skip
    dm = DigitsDataModule(batch_size=32)
    trainer.fit(module, dm)
    logged = float(trainer.logged_metrics["val/fid_1step"])
    assert cached_at_first_step == [1]  # the reference statistics come before training, not at validation
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    # the same FID, recomputed by hand from the EMA copy's samples (same seeds, same blocks)
    ema = ema_module(trainer, module)
    ema.eval()
    fid = make_fid(digits_extractor)
    ref = dm.reference_set("train")
    fid.update(to_uint8(torch.stack([ref[i]["x"] for i in range(len(ref))])), real=True)
    for b, start in enumerate(range(0, 120, 50)):
        g = torch.Generator().manual_seed(b)
        fid.update(to_uint8(ema.sample(min(50, 120 - start), 1, generator=g)), real=False)
    assert logged == pytest.approx(float(fid.compute()), rel=1e-5)

    # a second run reads the cached reference statistics instead of recomputing them
    monkeypatch.setattr(fid_module, "feature_statistics", lambda *a, **k: pytest.fail("recomputed"))
    from mmf_lightning.callbacks import fid as fid_callback

    monkeypatch.setattr(fid_callback, "feature_statistics", lambda *a, **k: pytest.fail("recomputed"))
    cb2 = FID(num_samples=60, steps=(1, 2), feature_extractor=digits_extractor, batch_size=50,
              cache_dir=str(tmp_path / "cache"))  # fmt: skip
    trainer2 = quiet_trainer(tmp_path, max_steps=1, callbacks=[LambdaScheduler(), cb2], val_check_interval=1,
                             num_sanity_val_steps=0, enable_checkpointing=False)  # fmt: skip
    trainer2.fit(_digits_module(), DigitsDataModule(batch_size=32))
    assert {"val/fid_1step", "val/fid_2step"} <= set(trainer2.logged_metrics)


def test_missing_inception_weights_stop_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("MMF_LIGHTNING_OFFLINE", "1")
    module = _digits_module()
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[LambdaScheduler(), FID(num_samples=10)])
    with pytest.raises(
        FileNotFoundError,
        match=r"inception-2015-12-05-6726825d.pth are missing.*download-weights.*feature_extractor_weights_path",
    ):
        trainer.fit(module, DigitsDataModule(batch_size=32))
    assert module.global_step == 0
    with pytest.raises(FileNotFoundError, match="at the configured path"):
        quiet_trainer(
            tmp_path, callbacks=[LambdaScheduler(), FID(feature_extractor_weights_path=str(tmp_path / "x.pth"))]
        ).fit(_digits_module(), DigitsDataModule(batch_size=32))


def test_fid_twice_in_one_run_each_equals_an_independent_recomputation(tmp_path):
    """Two validations in one fit: each logged FID equals scipy's Frechet distance between the
    reference images' features (raw uint8, not through the metric's conversion) and the features
    of the samples drawn from that validation's weights. Catches fake features kept from the first
    validation, real statistics lost by the reset, and a wrong pixel scale."""
    import copy

    torch.manual_seed(0)
    extractor = TinyExtractor()
    snapshots, logged = [], []

    def snapshot(trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            snapshots.append(copy.deepcopy(pl_module.state_dict()))

    recorder = LambdaCallback(
        on_validation_batch_start=snapshot,
        on_validation_end=lambda trainer, _: logged.append(float(trainer.callback_metrics["val/fid_1step"])),
    )
    cb = FID(num_samples=120, steps=(1,), feature_extractor=extractor, batch_size=50, cache_dir=str(tmp_path / "c"))
    trainer = quiet_trainer(tmp_path, max_steps=4, callbacks=[LambdaScheduler(), cb, recorder],
                            val_check_interval=2, num_sanity_val_steps=0, enable_checkpointing=False)  # fmt: skip
    dm = DigitsDataModule(batch_size=32)
    trainer.fit(_digits_module(), dm)
    assert len(logged) == len(snapshots) == 2

    real_uint8 = torch.from_numpy(np.asarray(dm.reference_set("train").base.images))  # the files' own pixels
    with torch.no_grad():
        real = extractor(real_uint8).double().numpy()
    for state, value in zip(snapshots, logged):
        module = _digits_module()
        module.load_state_dict(state)
        module.eval()
        fakes = []
        for b, start in enumerate(range(0, 120, 50)):  # block b: seed b, on any number of ranks
            x = module.sample(min(50, 120 - start), 1, generator=torch.Generator().manual_seed(b))
            fakes.append(((x.clamp(-1, 1) + 1) * 255 / 2).round().to(torch.uint8))  # [-1, 1] -> 0..255
        with torch.no_grad():
            fake = extractor(torch.cat(fakes)).double().numpy()
        assert value == pytest.approx(_scipy_fid(real, fake), rel=1e-4)
    assert logged[0] != pytest.approx(logged[1], rel=1e-6)  # the weights moved between the two
