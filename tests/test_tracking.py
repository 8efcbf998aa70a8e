"""TensorBoard logs as a user reads them: tensorboard's own EventAccumulator finds the curves and grids of a run,
at the learner's update count, and a resumed run continues them without the points of a lost process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import launch
from deploy.cli import parse_train
from deploy.tracking import TensorBoardLog, flat_scalars
from tests.helpers import read_log

CURVES = ("loss/proposal", "loss/q", "loss/selection", "throughput/updates_per_second",
          "throughput/env_steps_per_second", "progress/env_steps", "replay/gc_transitions", "weights/staleness",
          "eval/reconstruction_mse")


def steps(log, tag: str) -> list[int]:
    return [event.step for event in log.Scalars(tag)]


@pytest.fixture
def torch_threads():
    """launch.main's --threads sets this process's torch threads: put them back for the tests after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def train(data_dir, run: Path, updates: int, *extra: str) -> None:
    """A tiny single-process run in this process (one torch thread: two spin against a busy machine's load)."""
    code = launch.main(["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir),
                        "--num-goals", "256", "--total-updates", str(updates), "--checkpoint-dir", str(run),
                        "--eval-every", "1", "--eval-test-goals", "16", "--eval-fid-samples", "0",
                        "--log-every", "0.2", "--threads", "1", *extra])
    assert code == 0


def test_a_run_logs_curves_and_grids_and_a_resume_continues_them(data_dir, tmp_path, torch_threads):
    run = tmp_path / "run"
    train(data_dir, run, 60)
    first = read_log(run / "tb")
    assert set(CURVES) <= set(first.Tags()["scalars"])
    assert {"eval/samples", "eval/reconstructions"} <= set(first.Tags()["images"])
    assert steps(first, "loss/proposal")[-1] == 60 and len(steps(first, "loss/proposal")) >= 3
    grid = first.Images("eval/reconstructions")[-1]
    assert (grid.width, grid.height) == (16 * 30 + 2, 2 * 30 + 2)  # 16 test goals: 2 rows of 8 pairs, 28-pixel images
    for event in first.Scalars("eval/reconstruction_mse"):  # the logged figure is the evaluation's own
        written = json.loads((run / "eval" / f"eval-{event.step}.json").read_text())
        assert event.value == pytest.approx(written["reconstruction_mse"], rel=1e-6)

    train(data_dir, run, 100, "--resume")
    second = read_log(run / "tb")
    losses = steps(second, "loss/proposal")
    assert losses == sorted(set(losses)) and losses[-1] == 100  # one curve, in order, to the new end
    assert [s for s in losses if s <= 60] == steps(first, "loss/proposal")  # the first run's points kept
    assert any(60 < s < 100 for s in losses)
    assert any(image.step > 60 for image in second.Images("eval/samples"))
    assert "run/settings" in "".join(second.Tags()["tensors"])


def test_a_resume_from_an_older_checkpoint_drops_the_points_written_past_it(tmp_path):
    folder = tmp_path / "tb"
    log = TensorBoardLog(folder, 0)
    for step in range(0, 101, 10):  # a process killed at update 100, its newest checkpoint at 50
        log.scalars(step, {"loss/q": float(step)})
    log.close()
    log = TensorBoardLog(folder, 50)
    for step in (60, 70):
        log.scalars(step, {"loss/q": 1000.0 + step})
    log.scalars(55, {"loss/q": 2055.0})  # a learner restarted from a checkpoint at 55, mid-run
    log.close()
    points = [(event.step, event.value) for event in read_log(folder).Scalars("loss/q")]
    assert points == [(0, 0.0), (10, 10.0), (20, 20.0), (30, 30.0), (40, 40.0), (50, 50.0), (55, 2055.0)]


@pytest.mark.parametrize("flags, expected", [
    (["--checkpoint-dir", "runs/a"], Path("runs/a/tb")),
    (["--checkpoint-dir", "runs/a", "--log-dir", "none"], None),
    (["--checkpoint-dir", "runs/a", "--log-dir", "logs/b"], Path("logs/b")),
    (["--log-dir", "logs/b"], Path("logs/b")),
    ([], None),  # a run that writes no checkpoints writes no log unless asked
])
def test_where_the_log_goes(flags, expected):
    assert parse_train(["--preset", "tiny", *flags], "test").run.log_dir == expected


def test_log_dir_none_writes_no_log(data_dir, tmp_path, torch_threads):
    train(data_dir, tmp_path / "run", 5, "--log-dir", "none", "--eval-every", "0")
    assert (tmp_path / "run").is_dir() and not (tmp_path / "run" / "tb").exists()


def test_a_benchmark_reading_becomes_one_tag_per_number():
    reading = {"minutes": 2.5, "mse": {"q": 0.1, "lookahead": 0.08}, "distinct_codes": {"q": 12}, "label": "x"}
    assert flat_scalars(reading, "quality") == {"quality/minutes": 2.5, "quality/mse/q": 0.1,
                                                "quality/mse/lookahead": 0.08, "quality/distinct_codes/q": 12.0}
