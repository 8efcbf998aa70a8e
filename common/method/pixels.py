"""The two pixel scales: uint8 [0, 255] as stored, float [-1, 1] as the networks and the MDP see them.

Every MSE in this project is measured on the [-1, 1] scale (divide by 4 for the [0, 1] scale).
"""

from __future__ import annotations

import torch


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamping what a model overshoots."""
    return images.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
