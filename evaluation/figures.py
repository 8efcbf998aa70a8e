"""PNG figures in the layout of the paper's Figures 2 and 3: sample grids, goals beside their
reconstructions, and S-agent trajectories step by step from the initial state.

Images are [N, C, H, W], float in [-1, 1] (values outside are clamped, as intermediate states may
overshoot) or uint8. Grids are torchvision's `make_grid` with 2-pixel black padding.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid

PADDING = 2


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [-1, 1] float -> float in [0, 1] on the CPU, what make_grid expects."""
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def grid_size(rows: int, cols: int, height: int, width: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid written here, so callers and tests can predict it."""
    return cols * (width + PADDING) + PADDING, rows * (height + PADDING) + PADDING


def grid_pixels(images: torch.Tensor, columns: int) -> torch.Tensor:
    """Images row by row, `columns` per row, as one uint8 [3, H', W'] picture: what a PNG written here holds
    and what TensorBoard is given, so the two never differ."""
    return _pixels(_unit(images), columns)


def _pixels(unit: torch.Tensor, columns: int) -> torch.Tensor:
    """[N, C, H, W] floats in [0, 1] -> the uint8 [3, H', W'] grid, rounded as torchvision's save_image does."""
    grid = make_grid(unit, nrow=columns, padding=PADDING)
    return grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def save_pixels(pixels: torch.Tensor, path: str | Path) -> Path:
    """Write a uint8 [C, H, W] picture as a PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return path


def save_grid(images: torch.Tensor, path: str | Path, columns: int) -> Path:
    """Images row by row, `columns` per row."""
    return save_pixels(grid_pixels(images, columns), path)


def samples_grid(samples: torch.Tensor, limit: int = 100) -> torch.Tensor:
    """Figure 3 (right) as pixels: up to `limit` samples in a square-ish grid (10 x 10 for 100)."""
    samples = samples[:limit]
    return grid_pixels(samples, columns=math.ceil(math.sqrt(samples.shape[0])))


def samples_figure(samples: torch.Tensor, path: str | Path, limit: int = 100) -> Path:
    """Figure 3 (right): up to `limit` samples in a square-ish grid (10 x 10 for 100)."""
    return save_pixels(samples_grid(samples, limit), path)


def pairs_grid(goals: torch.Tensor, reconstructions: torch.Tensor, pairs_per_row: int = 8,
               limit: int = 64) -> torch.Tensor:
    """Figure 3 (left, centre) as pixels: each goal followed by its reconstruction, 8 pairs a row."""
    count = min(limit, goals.shape[0], reconstructions.shape[0])
    pairs = torch.stack([_unit(goals[:count]), _unit(reconstructions[:count])], dim=1)  # [n, 2, C, H, W]
    return _pixels(pairs.flatten(0, 1), columns=2 * min(pairs_per_row, count))


def reconstructions_figure(goals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                           pairs_per_row: int = 8, limit: int = 64) -> Path:
    """Figure 3 (left, centre) side by side: each goal followed by its reconstruction, 8 pairs a row."""
    return save_pixels(pairs_grid(goals, reconstructions, pairs_per_row, limit), path)


def trajectories_figure(states: torch.Tensor, path: str | Path, limit: int = 4) -> Path:
    """Figure 2: one row per S-agent trajectory, one column per state x_1 .. x_{H+1}.

    states: [B, H+1, C, H, W] as Trajectories.states holds them.
    """
    states = states[:limit]
    return save_grid(states.flatten(0, 1), path, columns=states.shape[1])


CHART_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (120, 120, 120), (148, 103, 189), (255, 127, 14))


def line_chart(panels: list[tuple[str, list[float], dict[str, list[float]]]], path: str | Path,
               size: tuple[int, int] = (520, 300)) -> Path:
    """Panels side by side, each (title, x values, {series name: y values}), drawn with Pillow.

    For learning curves (bench/quality.py); no plotting library is a dependency of the project.
    """
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", (width * len(panels), height), "white")
    draw = ImageDraw.Draw(image)
    for i, (title, xs, series) in enumerate(panels):
        _draw_panel(draw, (i * width, 0, width, height), title, xs, series)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _draw_panel(draw, box: tuple[int, int, int, int], title: str, xs: list[float], series: dict) -> None:
    left, top, width, height = box
    x0, y0, x1, y1 = left + 55, top + 25, left + width - 15, top + height - 35  # plotting area
    values = [v for ys in series.values() for v in ys if v is not None and math.isfinite(v)]
    if not xs or not values:
        return
    lo_x, hi_x = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    lo_y, hi_y = 0.0, max(values) * 1.05 or 1.0
    px = lambda x: x0 + (x - lo_x) / (hi_x - lo_x) * (x1 - x0)  # noqa: E731
    py = lambda y: y1 - (y - lo_y) / (hi_y - lo_y) * (y1 - y0)  # noqa: E731
    draw.text((left + 10, top + 5), title, fill="black")
    draw.rectangle((x0, y0, x1, y1), outline="black")
    for k in range(5):
        y, x = lo_y + k * (hi_y - lo_y) / 4, lo_x + k * (hi_x - lo_x) / 4
        draw.text((left + 5, py(y) - 5), f"{y:.3g}", fill="black")
        draw.text((px(x) - 10, y1 + 5), f"{x:.4g}", fill="black")
    for n, (name, ys) in enumerate(series.items()):
        colour = CHART_COLOURS[n % len(CHART_COLOURS)]
        points = [(px(x), py(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.text((x1 - 150, y0 + 5 + 12 * n), name, fill=colour)
