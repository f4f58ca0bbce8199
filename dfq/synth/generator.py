"""Image parameterizations: a small conv generator with per-image latents (default), or raw pixels.

Both produce images in the model's normalized input space and only ever inside the range real pixels
can take ([0, 1] before normalization): the generator ends in a sigmoid, pixels are clamped after
each step. A calibration set with impossible values would stretch a quantizer's activation ranges.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dfq.models.data_config import DataConfig
from dfq.synth.synth_config import SynthConfig


class Generator(nn.Module):
    """GDFQ / Genie-style: latent -> linear -> (upsample, conv, BN, LeakyReLU)* -> sigmoid.

    The linear layer maps to an `init` x `init` map (at most 8 pixels a side) and each block doubles
    it, so a 224-pixel model needs five cheap blocks rather than a huge linear layer.
    """

    def __init__(self, latent_dim: int, width: int, size: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, w = size
        self.blocks_n = _num_upsamples(max(height, w))
        self.init = (math.ceil(height / 2**self.blocks_n), math.ceil(w / 2**self.blocks_n))
        self.out_size = (height, w)
        self.fc = nn.Linear(latent_dim, width * self.init[0] * self.init[1])
        self.width = width
        layers: list[nn.Module] = [nn.BatchNorm2d(width)]
        c = width
        for i in range(self.blocks_n):
            c_out = width if i < self.blocks_n - 1 else max(width // 2, 8)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2),
            ]
            c = c_out
        layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(len(z), self.width, *self.init)
        x = self.body(x)
        return x[:, :, : self.out_size[0], : self.out_size[1]]


def _num_upsamples(side: int) -> int:
    n = 0
    while math.ceil(side / 2**n) > 8:
        n += 1
    return n


class ImageSource(nn.Module):
    """What the optimizer moves: `forward()` gives the current batch of normalized images."""

    def __init__(self, data_config: DataConfig) -> None:
        super().__init__()
        self.data_config = data_config
        mean, std = data_config.channel_stats()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.data_config.normalize(pixels, (self.mean, self.std))

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data_config.input_bounds((self.mean, self.std))

    def param_groups(self, cfg: SynthConfig, lr_scale: float) -> list[dict]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Keep the parameters valid after an optimizer step (pixels: clamp to the pixel range)."""


class GeneratorSource(ImageSource):
    def __init__(
        self,
        cfg: SynthConfig,
        data_config: DataConfig,
        batch: int,
        generator: Generator | None = None,
    ) -> None:
        super().__init__(data_config)
        self.generator = generator or Generator(
            cfg.latent_dim, cfg.generator_width, data_config.input_size
        )
        self.latent = nn.Parameter(torch.randn(batch, cfg.latent_dim))

    def forward(self) -> torch.Tensor:
        return self.normalize(self.generator(self.latent))

    def param_groups(self, cfg: SynthConfig, lr_scale: float) -> list[dict]:
        return [
            {"params": self.generator.parameters(), "lr": cfg.lr_generator * lr_scale},
            {"params": [self.latent], "lr": cfg.lr_latent * lr_scale},
        ]


class PixelSource(ImageSource):
    def __init__(self, cfg: SynthConfig, data_config: DataConfig, batch: int) -> None:
        super().__init__(data_config)
        lo, hi = self.bounds()
        self.pixels = nn.Parameter(torch.randn(batch, *data_config.input_size).clamp(lo, hi))

    def forward(self) -> torch.Tensor:
        return self.pixels

    def param_groups(self, cfg: SynthConfig, lr_scale: float) -> list[dict]:
        return [{"params": [self.pixels], "lr": cfg.lr_pixels * lr_scale}]

    @torch.no_grad()
    def after_step(self) -> None:
        lo, hi = self.bounds()
        self.pixels.copy_(torch.maximum(torch.minimum(self.pixels, hi), lo))

    @torch.no_grad()
    def start_from(self, images: torch.Tensor) -> None:
        """Continue from given images (e.g. upsampled from a low-resolution phase)."""
        self.pixels.copy_(images)
        self.after_step()


def seeded_generator(cfg: SynthConfig, data_config: DataConfig, device: torch.device) -> Generator:
    """A generator initialized from `cfg.seed` alone (the caller's RNG is left untouched), for
    methods that keep one generator across rounds: the set then depends on the seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        generator = Generator(cfg.latent_dim, cfg.generator_width, data_config.input_size)
    return generator.to(device).train()


def make_source(
    cfg: SynthConfig, data_config: DataConfig, batch: int, generator: Generator | None = None
) -> ImageSource:
    """A fresh parameterization for one batch (a given `generator` is reused, not re-made)."""
    if cfg.param == "pixels":
        return PixelSource(cfg, data_config, batch)
    return GeneratorSource(cfg, data_config, batch, generator)
