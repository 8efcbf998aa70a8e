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
