"""bench/fid_curve.py: every checkpoint a run kept becomes a point measured exactly like table1.py's GCRL row."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import launch
from bench import fid_curve, table1
from bench.baselines import protocol as pr
from common.storage.checkpoint import complete_checkpoints
from common.storage.data import load_goals

SIZES = ["--num-test", "8", "--fid-samples", "8", "--fid-reference", "16", "--batch-size", "8"]


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A tiny run that kept two checkpoints: 3 updates, then resumed to 6."""
    path = tmp_path_factory.mktemp("curve-run") / "run"
    base = ["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir), "--num-goals", "256",
            "--checkpoint-dir", str(path)]
    assert launch.main([*base, "--total-updates", "3"]) == 0
    assert launch.main([*base, "--total-updates", "6", "--resume"]) == 0
    return path


def test_each_kept_checkpoint_is_a_point_and_the_last_is_table1s_row(run_dir, data_dir, tmp_path):
    output, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    assert fid_curve.main([str(run_dir), "--data-dir", str(data_dir), *SIZES, "--output", str(output),
                           "--plot", str(plot)]) == 0
    report = json.loads(output.read_text())
    points = report["points"]
    assert [p["updates"] for p in points] == [3, 6]
    assert [p["checkpoint"] for p in points] == [c.name for c in complete_checkpoints(run_dir)]
    train, test = load_goals("mnist", data_dir), load_goals("mnist", data_dir, "test")
    proto = pr.build_protocol(train, test, 8, 16, 8, 8)
    row, _ = pr.evaluate_gcrl(run_dir, proto, 0)  # what table1.py reports for this run
    for key in ("recon_fid", "sample_fid", "recon_mse"):
        assert points[-1][key] == pytest.approx(row[key])
    assert points[0]["recon_mse"] != points[1]["recon_mse"]  # two models, not one measured twice
    assert report["floors"]["samples"] > 0 and Image.open(plot).size[0] > 100


def test_a_folder_without_checkpoints_is_one_line(tmp_path, data_dir, capsys):
    code = fid_curve.main([str(tmp_path), "--data-dir", str(data_dir), "--output", str(tmp_path / "c.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds no complete checkpoint" in err[0], err
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("argv, named", [(["--fid-samples", "1"], "--fid-samples"), (["--num-test", "0"], "--num-test")])
def test_bad_sizes_are_one_line(argv, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        fid_curve.parse_args([str(tmp_path), *argv, "--output", str(tmp_path / "c.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1 and named in err[0], err


def test_table1_curve_flag_keeps_a_checkpoint_per_interval_and_is_checked(tmp_path, capsys):
    args = table1.parse_args(["--minutes", "30", "--curve-every", "10", "--output", str(tmp_path / "t")])
    command = table1.training_command("gcrl", args)
    assert command[command.index("--checkpoint-every") + 1] == "600"
    assert int(command[command.index("--keep-checkpoints") + 1]) >= 4  # 10, 20, 30 and the final one all survive
    with pytest.raises(SystemExit):
        table1.parse_args(["--minutes", "5", "--curve-every", "5", "--output", str(tmp_path / "u")])
    assert "--curve-every" in capsys.readouterr().err
