"""Device choice: the GPU when there is one, the CPU otherwise, so every path runs on both."""

from __future__ import annotations

import torch

from common.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def gpu_available() -> bool:
    """True when torch sees a CUDA device."""
    return torch.cuda.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda when available; asking for cuda without one is an error, not a silent CPU run."""
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
    if name == "cuda" and not gpu_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no GPU; use 'cpu' or 'auto'")
    if name == "auto":
        name = "cuda" if gpu_available() else "cpu"
    return torch.device(name)
