"""PNG figures in the layout of the paper's Figures 2 and 3: sample grids, goals beside their
reconstructions, and S-agent trajectories step by step from the initial state.

Images are [N, C, H, W], float in [-1, 1] (values outside are clamped, as intermediate states may
overshoot) or uint8. Grids are torchvision's `make_grid` with 2-pixel black padding.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import save_image

PADDING = 2


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [-1, 1] float -> float in [0, 1] on the CPU, what save_image expects."""
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def grid_size(rows: int, cols: int, height: int, width: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid written here, so callers and tests can predict it."""
    return cols * (width + PADDING) + PADDING, rows * (height + PADDING) + PADDING


def save_grid(images: torch.Tensor, path: str | Path, columns: int) -> Path:
    """Images row by row, `columns` per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(_unit(images), path, nrow=columns, padding=PADDING)
    return path


def samples_figure(samples: torch.Tensor, path: str | Path, limit: int = 100) -> Path:
    """Figure 3 (right): up to `limit` samples in a square-ish grid (10 x 10 for 100)."""
    samples = samples[:limit]
    return save_grid(samples, path, columns=math.ceil(math.sqrt(samples.shape[0])))


def reconstructions_figure(goals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                           pairs_per_row: int = 8, limit: int = 64) -> Path:
    """Figure 3 (left, centre) side by side: each goal followed by its reconstruction, 8 pairs a row."""
    count = min(limit, goals.shape[0], reconstructions.shape[0])
    pairs = torch.stack([_unit(goals[:count]), _unit(reconstructions[:count])], dim=1)  # [n, 2, C, H, W]
    columns = 2 * min(pairs_per_row, count)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(pairs.flatten(0, 1), path, nrow=columns, padding=PADDING)
    return path


def trajectories_figure(states: torch.Tensor, path: str | Path, limit: int = 4) -> Path:
    """Figure 2: one row per S-agent trajectory, one column per state x_1 .. x_{H+1}.

    states: [B, H+1, C, H, W] as Trajectories.states holds them.
    """
    states = states[:limit]
    return save_grid(states.flatten(0, 1), path, columns=states.shape[1])
