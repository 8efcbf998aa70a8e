"""bench/quality_table.py --plot: several runs' curves in one chart, one line per run, so a reader sees the
afterstate agent beside the lookahead; a missing file name is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bench import quality_table
from evaluation.figures import CHART_COLOURS

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_run(folder: Path, behaviour: str, mses: list[float], fids: list[float]) -> Path:
    """A quality.json as bench/quality.py writes it: readings at 0, 10, 20, 30 minutes, FIDs at 10 and 30."""
    readings = [{"minutes": m, "updates": int(m * 300), "mse": {behaviour: v, "q": 0.4}, "s_agent_cross_entropy": 2.5}
                for m, v in zip((0.0, 10.0, 20.0, 30.0), mses)]
    fid = [{"minutes": m, "updates": int(m * 300), "sample_fid": v, "recon_fid": v - 5} for m, v in zip((10.0, 30.0), fids)]
    folder.mkdir(parents=True)
    (folder / "quality.json").write_text(json.dumps({"readings": readings, "fid": fid, "baseline_mse": 0.26,
                                                     "training_flags": [], "config": {"acting": {"behaviour": behaviour}}}))
    return folder


def colour_count(image: Image.Image, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> int:
    """Pixels of exactly `colour` inside box (left, top, right, bottom)."""
    return sum(1 for pixel in image.crop(box).getdata() if pixel == colour)


def test_plot_draws_a_line_per_run_in_each_panel(tmp_path):
    first = write_run(tmp_path / "lookahead", "lookahead", [2.0, 0.09, 0.08, 0.075], [90.0, 57.0])
    second = write_run(tmp_path / "afterstate", "afterstate", [2.0, 0.11, 0.09, 0.08], [95.0, 60.0])
    quality_table.comparison_chart([first, second], tmp_path / "curves.png")
    image = Image.open(tmp_path / "curves.png").convert("RGB")
    assert image.size == (3 * 520, 300)  # MSE, sample FID, reconstruction FID
    for panel in range(3):
        box = (panel * 520 + 55, 25, panel * 520 + 350, 265)  # the plotting area left of the legend
        assert colour_count(image, box, CHART_COLOURS[0]) > 20 and colour_count(image, box, CHART_COLOURS[1]) > 20


def test_plot_without_a_file_name_is_one_line(tmp_path):
    run = write_run(tmp_path / "lookahead", "lookahead", [2.0, 0.09, 0.08, 0.075], [90.0, 57.0])
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "quality_table.py"), str(run), "--plot"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.strip().splitlines() == ["error: --plot needs a file name "
                                                                        "(e.g. --plot curves.png)"]
