"""Frozen autoencoders for latent-space training (``data.LatentDataModule``).

Interface: ``encode(x: (B, C, H, W) in [-1, 1]) -> (B, c, h, w)`` and ``decode((B, c, h, w)) -> (B, C, H, W)`` in
[-1, 1] (unclamped), both deterministic, and ``identity() -> str`` naming the weights (for the latent cache).

- ``StableDiffusionVAE``: Stable Diffusion's KL autoencoder through ``diffusers`` (the ``latent`` extra), 8x
  downsampling to 4 channels, the posterior's mean as the latent. Its weights come from the Hugging Face hub cache or
  a folder, never from the network during a run: when missing, the run stops before training, naming what to stage.
- ``ConvAutoencoder``: a small convolutional autoencoder of the same interface (random or trained weights), for
  tests and small experiments.
"""

import torch
from torch import nn

from mmf_lightning.utils.config import RecordsInit
from mmf_lightning.utils.fingerprint import weights_hash


class ConvAutoencoder(RecordsInit, nn.Module):
    """``encode``: ``levels`` stride-2 convolutions (SiLU between) to ``latent_channels``; ``decode``: the mirror with
    transposed convolutions. ``seed`` fixes the random initial weights, so two instances are the same autoencoder;
    ``weights_path``: a state dict to load instead."""

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        width: int = 32,
        levels: int = 1,
        seed: int = 0,
        weights_path: str | None = None,
    ):
        super().__init__()
        if levels < 1:
            raise ValueError(f"ConvAutoencoder levels must be >= 1, got {levels}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            enc: list[nn.Module] = []
            dec: list[nn.Module] = []
            c = in_channels
            for _ in range(levels):
                enc += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.SiLU()]
                dec = [nn.SiLU(), nn.ConvTranspose2d(width, c, 4, stride=2, padding=1), *dec]
                c = width
            self.encoder = nn.Sequential(*enc, nn.Conv2d(width, latent_channels, 1))
            self.decoder = nn.Sequential(nn.Conv2d(latent_channels, width, 1), *dec)
        if weights_path is not None:
            self.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.requires_grad_(False).eval()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def identity(self) -> str:
        return f"ConvAutoencoder-{weights_hash(self)}"


class StableDiffusionVAE(RecordsInit, nn.Module):
    """Stable Diffusion's VAE (``diffusers.AutoencoderKL``), frozen. ``pretrained``: a hub id, read from the local hub
    cache only (``HF_HOME``), or a folder holding ``config.json`` and the weights. Latents are the posterior's mean,
    unscaled (``LatentDataModule`` scales them)."""

    def __init__(self, pretrained: str = "stabilityai/sd-vae-ft-ema", subfolder: str | None = None):
        super().__init__()
        try:
            from diffusers import AutoencoderKL
        except ImportError as err:
            raise ImportError(
                "StableDiffusionVAE needs diffusers: pip install -e '.[latent]' (or pip install diffusers)"
            ) from err
        try:
            self.vae = AutoencoderKL.from_pretrained(pretrained, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"the Stable Diffusion VAE weights {pretrained!r} are not on this machine ({type(err).__name__}: "
                f"{str(err).splitlines()[0]}); stage them on a machine with internet with `huggingface-cli download "
                f"{pretrained} --local-dir DIR` and copy DIR here (then pass pretrained: DIR), or fill the hub cache "
                "($HF_HOME) there and copy it"
            ) from None
        self.name = pretrained
        self.requires_grad_(False).eval()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    def identity(self) -> str:
        return f"StableDiffusionVAE-{weights_hash(self)}"
