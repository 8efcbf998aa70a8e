"""`launch.py sweep` as a user runs it: Ray Tune trials that are ordinary single-process runs, and bad flags
refused in one line before Ray starts."""

from __future__ import annotations

import json

import pytest

import launch
from common.storage.checkpoint import load_checkpoint
from deploy.cli import parse_train
from deploy.sweep_flags import parse_sweep, probe_points, trial_flags, trial_name
from tests.helpers import read_log, run_launch

TINY = ["--preset", "tiny", "--num-goals", "256", "--total-updates", "60", "--eval-every", "2",
        "--eval-test-goals", "32"]


@pytest.mark.slow
def test_a_two_trial_sweep_leaves_a_table_checkpoints_and_logs(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    text = run_launch(["sweep", "--checkpoint-dir", str(sweep), "--grid", "learning.proposal_lr=1e-3,3e-3",
                       "--data-dir", str(data_dir), *TINY], tmp_path / "log.txt", timeout=600)
    trials = json.loads((sweep / "sweep.json").read_text())["trials"]
    assert sorted(t["params"]["learning.proposal_lr"] for t in trials) == [1e-3, 3e-3]
    summary = (sweep / "summary.md").read_text()
    assert summary in text and summary.count("| done |") == 2
    for trial in trials:
        assert trial["status"] == "done" and trial["updates"] == 60 and 0 < trial["reconstruction_mse"] < 4
        checkpoint = load_checkpoint(sweep / "trials" / trial["trial"])  # the usual format, the trial's settings
        assert str(checkpoint.path) == trial["checkpoint"] and checkpoint.manifest["updates"] == 60
        assert checkpoint.manifest["config"]["learning"]["proposal_lr"] == trial["params"]["learning.proposal_lr"]
        curve = read_log(sweep / "tb" / trial["trial"]).Scalars("eval/reconstruction_mse")
        assert curve[-1].step == 60 and curve[-1].value == pytest.approx(trial["reconstruction_mse"])
        assert trial["command"].startswith("python launch.py ") and "--runtime single-process" in trial["command"]


def test_every_grid_point_is_a_trial_with_its_own_flags(data_dir, tmp_path):
    options = parse_sweep(["--checkpoint-dir", str(tmp_path / "s"), "--grid", "acting.beam_width=1,2",
                           "--grid", "preset=tiny,small", "--choice", "learning.q_lr=1e-3,3e-3",
                           "--data-dir", str(data_dir), "--preset", "small-lookahead"])
    points = probe_points(options)
    assert options.grid_size() == 4 and len(points) == 5  # 4 grid points, then the second choice
    name = trial_name(3, points[3])
    assert name == "03-beam_width=2,q_lr=0.001,preset=small"  # by full key: acting., learning., preset
    command = parse_train(trial_flags(options, points[3], name), "test")
    assert command.preset_name == "small" and command.config.acting.beam_width == 2  # the trial's values win
    assert command.runtime == "single-process" and command.run.checkpoint_dir == tmp_path / "s" / "trials" / name
    assert command.run.log_dir == tmp_path / "s" / "tb" / name and command.run.threads == 1


BAD_SWEEPS = [
    ([], "a sweep needs --checkpoint-dir"),
    (["--checkpoint-dir", "S"], "a sweep needs at least one axis"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width"], "--grid 'acting.beam_width': expected KEY=V1,V2"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,0"],
     "the trial with acting.beam_width=0: acting.beam_width must be a positive integer, got 0"),
    (["--checkpoint-dir", "S", "--grid", "acting.nope=1,2"], "unknown setting 'acting.nope'"),
    (["--checkpoint-dir", "S", "--grid", "preset=tiny,huge"], "invalid choice: 'huge'"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,1"], "a value is repeated"),
    (["--checkpoint-dir", "S", "--grid", "seed=1,2", "--choice", "seed=3,4"], "swept by one axis only"),
    (["--checkpoint-dir", "S", "--loguniform", "learning.q_lr=0,1"], "LOW must be positive, got 0"),
    (["--checkpoint-dir", "S", "--uniform", "learning.q_lr=1,0.5"], "LOW < HIGH"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--runtime", "ray"], "--runtime ray: each sweep"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--resume"], "--resume: a sweep starts new"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--asha"], "--asha stops trials by training time"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--asha", "--time-limit", "60",
      "--asha-grace", "90"], "--asha-grace 90s leaves ASHA nothing to stop"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--eval-every", "0"], "--eval-every must be above 0"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--metric", "sample_fid"],
     "--metric sample_fid needs FID"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--metric", "loss"], "--metric must be one of"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--trial-cpus", "0"], "--trial-cpus must be"),
    (["--checkpoint-dir", "S", "--grid", "acting.beam_width=1,2", "--bogus", "3"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("flags, expected", BAD_SWEEPS)
def test_bad_sweep_flags_are_one_line_before_ray_starts(capsys, tmp_path, flags, expected):
    flags = [str(tmp_path / "S") if flag == "S" else flag for flag in flags]
    assert launch.main(["sweep", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "S").exists()  # nothing was written


def test_a_folder_with_trials_is_refused(capsys, tmp_path):
    (tmp_path / "S" / "trials" / "00-beam_width=1").mkdir(parents=True)
    assert launch.main(["sweep", "--checkpoint-dir", str(tmp_path / "S"), "--grid", "acting.beam_width=1,2"]) == 2
    assert "already holds a sweep's trials" in capsys.readouterr().err
