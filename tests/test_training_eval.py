"""The periodic evaluation during single-process training: due on its clock, written into the run folder."""

from __future__ import annotations

import json

import launch


def test_single_process_run_evaluates_every_so_often(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code = launch.main(["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir),
                        "--num-goals", "256", "--total-updates", "150", "--checkpoint-dir", str(run),
                        "--eval-every", "1", "--eval-test-goals", "32", "--eval-fid-samples", "0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    reports = sorted((run / "eval").glob("eval-*.json"))
    assert reports and "eval: recon MSE" in out.err
    result = json.loads(reports[-1].read_text())
    assert result["num_test"] == 32 and 0 < result["reconstruction_mse"] < 4 and result["sample_fid"] is None
    assert (run / "eval" / f"samples-{result['updates']}.png").exists()


def test_eval_every_zero_writes_nothing(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert launch.main(["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir),
                        "--num-goals", "128", "--total-updates", "20", "--checkpoint-dir", str(run),
                        "--eval-every", "0"]) == 0
    assert not (run / "eval").exists()
