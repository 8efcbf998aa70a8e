"""A convolutional VAE (Kingma and Welling, 2014) built from the GCRL networks' unit (3x3 conv, GroupNorm,
ReLU), for the paper's Table 1 baseline: reconstruct = decode the posterior mean, sample = decode z ~ N(0, I).

The decoder is Gaussian. With decoder_sigma None its variance is the batch's mean squared error (the
"optimal sigma" VAE of Rybkin et al., 2021), which sets the balance between reconstruction and KL that
a fixed sigma would leave to tuning; a number fixes sigma (0.7071 is the GCRL model's last step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from common.method.config import check_positive, check_positive_int
from common.errors import ConfigError
from common.method.networks import conv_block


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of the encoder and decoder, and the decoder's likelihood."""

    latent_dim: int = 32
    widths: tuple[int, ...] = (32, 64, 128)  # encoder levels, each halving the resolution; decoder mirrors
    groups: int = 8
    decoder_sigma: float | None = None  # None: the optimal sigma (batch MSE); else a fixed Gaussian sigma

    def __post_init__(self):
        check_positive_int("vae.latent_dim", self.latent_dim)
        check_positive_int("vae.groups", self.groups)
        if not isinstance(self.widths, (tuple, list)) or not self.widths:
            raise ConfigError(f"vae.widths must be a non-empty list of widths, got {self.widths!r}")
        for w in self.widths:
            check_positive_int("vae.widths[]", w)
            if w % self.groups:
                raise ConfigError(f"vae.groups ({self.groups}) must divide every width, got width {w}")
        if self.decoder_sigma is not None:
            check_positive("vae.decoder_sigma", self.decoder_sigma)
        object.__setattr__(self, "widths", tuple(self.widths))


def level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Feature-map sizes after each stride-2 level: 28x28 -> [(14, 14), (7, 7), (4, 4)]."""
    sizes = []
    for _ in range(levels):
        height, width = (height + 1) // 2, (width + 1) // 2
        sizes.append((height, width))
    return sizes


class VAE(nn.Module):
    """Encoder q(z | x) = N(mu, diag exp(log_var)); decoder mean x-hat(z) in [-1, 1] (tanh)."""

    def __init__(self, config: VAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config, self.image_shape = config, tuple(image_shape)
        c, h, w = self.image_shape
        widths, self.sizes = config.widths, level_sizes(h, w, len(config.widths))
        ins = (c,) + widths[:-1]
        self.encoder = nn.Sequential(*(nn.Sequential(conv_block(i, o, config.groups, stride=2),
                                                     conv_block(o, o, config.groups)) for i, o in zip(ins, widths)))
        flat = widths[-1] * self.sizes[-1][0] * self.sizes[-1][1]
        self.posterior = nn.Linear(flat, 2 * config.latent_dim)
        self.expand = nn.Linear(config.latent_dim, flat)
        outs = tuple(reversed(widths[:-1])) + (widths[0],)
        self.decoder = nn.ModuleList(nn.Sequential(conv_block(i, o, config.groups), conv_block(o, o, config.groups))
                                     for i, o in zip(reversed(widths), outs))
        self.out = nn.Conv2d(widths[0], c, kernel_size=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> (mu, log_var), each [B, latent_dim]."""
        mu, log_var = self.posterior(self.encoder(x).flatten(1)).float().chunk(2, dim=1)
        return mu, log_var.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> x-hat [B, C, H, W] in [-1, 1]."""
        features = self.expand(z).view(z.shape[0], self.config.widths[-1], *self.sizes[-1])
        targets = list(reversed(self.sizes[:-1])) + [self.image_shape[1:]]
        for block, size in zip(self.decoder, targets):
            features = block(F.interpolate(features, size=size, mode="bilinear", align_corners=False))
        return torch.tanh(self.out(features)).float()

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per image, divided by the pixel count (so losses of image sizes compare)."""
        mu, log_var = self.encode(x)
        z = mu + (0.5 * log_var).exp() * torch.randn(mu.shape, device=mu.device, generator=generator)
        squared = (self.decode(z) - x).pow(2).flatten(1)  # [B, D]
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=1)  # [B]
        return (gaussian_nll(squared, self.config.decoder_sigma) + kl).mean() / squared.shape[1]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the posterior mean: x [B, C, H, W] -> [B, C, H, W]."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode `count` draws of the prior N(0, I)."""
        device = next(self.parameters()).device
        return self.decode(torch.randn((count, self.config.latent_dim), device=device, generator=generator))


def gaussian_nll(squared: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """-log N(x; x-hat, sigma^2 I) per image, up to a constant; squared [B, D] -> [B].

    sigma None: sigma^2 = the batch's mean squared error, where the sum of squares over 2 sigma^2 is
    the constant D / 2 and what is left is D log sigma (Rybkin et al., 2021).
    """
    d = squared.shape[1]
    if sigma is None:
        return 0.5 * d * torch.log(squared.mean() + 1e-8).expand(squared.shape[0])
    return squared.sum(dim=1) / (2.0 * sigma ** 2) + d * math.log(sigma)
