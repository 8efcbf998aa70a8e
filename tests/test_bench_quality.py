"""bench/quality.py never loses a run: what FID needs is checked before training, and the report is written
after every reading (a run that dies later keeps what it measured)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bench import quality


def test_missing_fid_dependency_stops_before_training_in_one_line(tmp_path, data_dir, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchmetrics" else real(name, *a))
    code = quality.main(["--minutes", "5", "--data-dir", str(data_dir), "--output", str(tmp_path / "q"),
                         "--", "--preset", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: FID needs torchmetrics"), err
    assert not (tmp_path / "q").exists()  # nothing trained, nothing written


def test_report_is_written_after_each_reading_and_a_checkpoint_is_left(tmp_path, data_dir, monkeypatch):
    written = []
    real_write = quality.write_json

    def spy(path, report):
        written.append(len(report["readings"]))
        return real_write(path, report)

    monkeypatch.setattr(quality, "write_json", spy)
    output = tmp_path / "q"
    code = quality.main(["--minutes", "0.05", "--every", "0.05", "--num-test", "16", "--fid-samples", "0",
                         "--data-dir", str(data_dir), "--output", str(output), "--", "--preset", "tiny"])
    report = json.loads((output / "quality.json").read_text())
    assert code == 0 and written[:2] == [1, 2]  # the untrained reading, then the last, each written at once
    last = report["readings"][-1]
    assert set(last["mse"]) == {"q", "lookahead"} and last["seconds"] > 0
    assert len(last["s_agent_cross_entropy_per_step"]) == report["config"]["mdp"]["horizon"]
    assert last["s_agent_cross_entropy"] == pytest.approx(sum(last["s_agent_cross_entropy_per_step"]) / 3, abs=1e-3)
    assert report["checkpoint"] and (output / "checkpoint").is_dir()


def test_a_run_that_ends_before_its_first_reading_says_so_and_keeps_its_checkpoint(tmp_path, data_dir, capsys):
    output = tmp_path / "q"
    code = quality.main(["--readings-at", "10", "--num-test", "16", "--fid-samples", "0", "--data-dir",
                         str(data_dir), "--output", str(output), "--", "--preset", "tiny", "--total-updates", "2"])
    out = capsys.readouterr().out
    report = json.loads((output / "quality.json").read_text())
    assert code == 1 and "before its first reading" in out, out[-500:]
    assert report["readings"] == [] and report["updates"] == 2 and (output / "checkpoint").is_dir()
