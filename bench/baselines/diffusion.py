"""DDPM (Ho et al., 2020) with the GCRL model's U-Net as denoiser, and its two samplers: ancestral
(1000 network evaluations per image) and DDIM (Song et al., 2021a) over a subsequence of steps.

The denoiser is `ProposalUNet` built for an MDP of T steps and one selection, so the step t enters as
an image-sized embedding concatenated on the channels (the paper's section 4.1: "an embedding the
size of the image ... as a set of extra channels"), with the same blocks and widths as S-prop-net.
It predicts the noise eps. Steps are 0-based here: t in [0, T), t = 0 the least noisy.

Both samplers are written as per-step moments (mean, variance) so the known identity can be tested:
DDIM with eta = 1 over all T steps takes exactly the DDPM step with the posterior variance beta~_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.method.config import MDPConfig, NetworkConfig, check_positive_int
from common.errors import ConfigError
from common.method.networks import ProposalUNet


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process (Ho et al.: T = 1000, beta linear from 1e-4 to 0.02) and the denoiser's size."""

    steps: int = 1000  # T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    widths: tuple[int, ...] = (16, 32, 64, 128)  # the U-Net levels, as the GCRL preset's proposal_widths
    groups: int = 8
    sample_steps: int = 16  # DDIM steps, the GCRL model's horizon in the paper

    def __post_init__(self):
        check_positive_int("diffusion.steps", self.steps)
        check_positive_int("diffusion.sample_steps", self.sample_steps)
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError(f"diffusion betas must satisfy 0 < beta_start <= beta_end < 1, got "
                              f"{self.beta_start} and {self.beta_end}")
        if self.sample_steps > self.steps:
            raise ConfigError(f"diffusion.sample_steps must be at most steps ({self.steps}), got {self.sample_steps}")
        object.__setattr__(self, "widths", tuple(self.widths))
        NetworkConfig(proposal_widths=self.widths, selection_widths=self.widths[:1], groups=self.groups)


class Schedule:
    """beta_t, alpha_t = 1 - beta_t and alpha-bar_t = prod alpha, in float64 on one device."""

    def __init__(self, config: DiffusionConfig, device="cpu"):
        self.betas = torch.linspace(config.beta_start, config.beta_end, config.steps, dtype=torch.float64,
                                    device=device)  # [T]
        self.alphas = 1.0 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)  # [T]

    def alpha_bar(self, t: int) -> torch.Tensor:
        """alpha-bar_t, with alpha-bar_{-1} = 1 (the clean image) for the last DDIM step."""
        return self.alpha_bars[t] if t >= 0 else torch.ones((), dtype=torch.float64, device=self.betas.device)

    def posterior_variance(self, t: int) -> torch.Tensor:
        """beta~_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) beta_t, Ho et al.'s eq. (7)."""
        return (1.0 - self.alpha_bar(t - 1)) / (1.0 - self.alpha_bar(t)) * self.betas[t]


def noised(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): sqrt(a-bar_t) x0 + sqrt(1 - a-bar_t) eps; x0, noise [B, C, H, W], t [B]."""
    a_bar = schedule.alpha_bars[t].to(x0.dtype).view(-1, 1, 1, 1)
    return a_bar.sqrt() * x0 + (1.0 - a_bar).sqrt() * noise


def ddpm_step_moments(schedule: Schedule, x_t: torch.Tensor, t: int, eps: torch.Tensor):
    """p(x_{t-1} | x_t): mean 1/sqrt(a_t) (x_t - beta_t / sqrt(1 - a-bar_t) eps), variance beta~_t."""
    beta, alpha, a_bar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bar(t)
    mean = (x_t - (beta / (1.0 - a_bar).sqrt()) * eps) / alpha.sqrt()
    return mean, schedule.posterior_variance(t)


def ddim_step_moments(schedule: Schedule, x_t: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, eta: float):
    """Song et al.'s eq. (12) from step t to t_prev < t (-1: the image): mean and variance sigma^2."""
    a_bar, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    x0 = (x_t - (1.0 - a_bar).sqrt() * eps) / a_bar.sqrt()
    variance = eta ** 2 * (1.0 - a_prev) / (1.0 - a_bar) * (1.0 - a_bar / a_prev)
    mean = a_prev.sqrt() * x0 + (1.0 - a_prev - variance).clamp(min=0.0).sqrt() * eps
    return mean, variance


class Diffusion(nn.Module):
    """The DDPM: denoiser eps_theta(x_t, t) plus its schedule; training loss and both samplers."""

    def __init__(self, config: DiffusionConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config, self.image_shape = config, tuple(image_shape)
        mdp = MDPConfig(horizon=1, num_proposals=config.steps)  # the U-Net's index A*h + a is then t (h = 0, a = t)
        net = NetworkConfig(proposal_widths=config.widths, selection_widths=config.widths[:1], groups=config.groups)
        self.denoiser = ProposalUNet(self.image_shape, mdp, net)
        self._schedule = None

    def schedule(self) -> Schedule:
        """The schedule on the model's device (built once per device)."""
        device = next(self.parameters()).device
        if self._schedule is None or self._schedule.betas.device != device:
            self._schedule = Schedule(self.config, device)
        return self._schedule

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise: x_t [B, C, H, W], t [B] long -> [B, C, H, W]."""
        return self.denoiser(x_t, torch.zeros_like(t), t).float()

    def loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ho et al.'s simple loss: E ||eps - eps_theta(x_t, t)||^2 per pixel, t uniform in [0, T)."""
        t = torch.randint(0, self.config.steps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        return (self.eps(noised(self.schedule(), x0, t, noise), t) - noise).pow(2).mean()

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None, sampler: str = "ddpm",
               eta: float = 0.0) -> torch.Tensor:
        """`count` images in [-1, 1]: sampler "ddpm" (all T steps) or "ddim" (config.sample_steps steps)."""
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        device = next(self.parameters()).device
        x = torch.randn((count, *self.image_shape), device=device, generator=generator)
        steps = list(range(self.config.steps - 1, -1, -1)) if sampler == "ddpm" else ddim_steps(self.config)
        for k, t in enumerate(steps):
            eps = self.eps(x, torch.full((count,), t, dtype=torch.long, device=device)).double()
            if sampler == "ddpm":
                mean, variance = ddpm_step_moments(self.schedule(), x.double(), t, eps)
            else:
                t_prev = steps[k + 1] if k + 1 < len(steps) else -1
                mean, variance = ddim_step_moments(self.schedule(), x.double(), t, t_prev, eps, eta)
            noise = torch.randn(x.shape, device=device, generator=generator) if t > 0 else 0.0
            x = (mean + variance.sqrt() * noise).float()
        return x.clamp(-1.0, 1.0)

    def evaluations_per_image(self, sampler: str) -> int:
        """Denoiser (U-Net) passes per sample."""
        return self.config.steps if sampler == "ddpm" else self.config.sample_steps


SAMPLERS = ("ddpm", "ddim")


def ddim_steps(config: DiffusionConfig) -> list[int]:
    """The DDIM subsequence, noisiest first: sample_steps steps evenly spread over [0, T), T - 1 included."""
    return torch.linspace(config.steps - 1, 0, config.sample_steps).round().long().tolist()
