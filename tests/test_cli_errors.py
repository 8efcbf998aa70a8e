"""Bad input stops with one clear line naming the value and what was expected (exit status 2)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import launch
from tests.helpers import REPO


def one_error_line(capsys, argv: list[str]) -> str:
    code = launch.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("flag, needle", [
    (["--preset", "huge"], "'huge'"),
    (["--dataset", "cifar10"], "'cifar10'"),
    (["--set", "mdp.horizon=0"], "mdp.horizon must be a positive integer, got 0"),
    (["--set", "mdp.num_proposals=-3"], "mdp.num_proposals must be a positive integer, got -3"),
    (["--set", "mdp.sigma=0"], "mdp.sigma must be a positive number, got 0"),
    (["--set", "mdp.sigma=-1.5"], "got -1.5"),
    (["--set", "learning.q_batch=0"], "learning.q_batch must be a positive integer, got 0"),
    (["--set", "learning.proposal_batch=-8"], "got -8"),
    (["--set", "learning.q_lr=0"], "learning.q_lr must be a positive number, got 0"),
    (["--set", "learning.selection_lr=-0.001"], "got -0.001"),
    (["--set", "learning.rho=1.5"], "learning.rho must be a number in (0, 1], got 1.5"),
    (["--set", "acting.kappa=-0.1"], "acting.kappa must be a number >= 0, got -0.1"),
    (["--set", "acting.behaviour=greedy"], "acting.behaviour must be one of q, lookahead, got 'greedy'"),
    (["--set", "acting.beam_width=0"], "acting.beam_width must be a positive integer, got 0"),
    (["--set", "acting.bf16=maybe"], "acting.bf16 must be true or false, got 'maybe'"),
    (["--set", "learning.q_target=every"], "learning.q_target must be one of sampled, all_actions, got 'every'"),
    (["--set", "mdp.alphas=[1.0, 0.5]"], "mdp.alphas must list one rate per step (3 for H=3), got 2"),
    (["--set", "mdp.alphas=[1.0, 0.0, 0.5]"], "mdp.alphas[2] must be a positive number, got 0.0"),
    (["--set", "mdp.horizn=4"], "unknown setting 'mdp.horizn'"),
    (["--total-updates", "0"], "--total-updates must be a positive integer, got 0"),
    (["--total-updates", "many"], "invalid int value: 'many'"),
    (["--time-limit", "-5"], "--time-limit must be a positive number, got -5"),
    (["--num-goals", "0"], "--num-goals must be a positive integer, got 0"),
    (["--resume"], "--resume needs --checkpoint-dir"),
])
def test_bad_flag_is_one_line_naming_the_value(capsys, data_dir, flag, needle):
    line = one_error_line(capsys, ["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir)]
                          + flag if flag[0] != "--preset" else ["--data-dir", str(data_dir)] + flag)
    assert needle in line


def test_bad_config_file_names_the_file_and_setting(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("mdp:\n  horizon: 4\n  num_proposals: 0\n")
    line = one_error_line(capsys, ["--runtime", "single-process", "--config", str(config)])
    assert "mdp.num_proposals must be a positive integer, got 0" in line
    config.write_text("mdp: [1, 2\n")
    assert str(config) in one_error_line(capsys, ["--config", str(config)])
    config.write_text("replay:\n  capacity: 10\n")
    assert "unknown setting 'replay.capacity'" in one_error_line(capsys, ["--config", str(config)])
    assert "cannot read" in one_error_line(capsys, ["--config", str(tmp_path / "missing.yaml")])


def test_missing_data_folder_names_where_it_looked(capsys, tmp_path):
    line = one_error_line(capsys, ["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(tmp_path)])
    assert str(tmp_path / "MNIST" / "raw") in line and "--download" in line


def test_truncated_data_file_is_named_with_its_sizes(capsys, tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = (data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(data[: len(data) // 2])
    line = one_error_line(capsys, ["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(tmp_path)])
    assert "train-images-idx3-ubyte is truncated or corrupt" in line and str(len(data) // 2) in line
    assert (raw / "train-images-idx3-ubyte").stat().st_size == len(data) // 2  # the user's file is left alone


def test_gzip_only_data_folder_loads_and_a_truncated_gzip_is_refused(capsys, tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gz = data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    shutil.copy(gz, raw)
    from common.data import load_goals

    assert len(load_goals("mnist", tmp_path)) == 60_000
    (raw / gz.name).write_bytes(gz.read_bytes()[:100_000])
    line = one_error_line(capsys, ["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(tmp_path)])
    assert "train-images-idx3-ubyte.gz is truncated or corrupt" in line


def test_image_folder_of_mixed_sizes_names_the_odd_file(capsys, tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (9, 8)).save(tmp_path / "b.png")
    line = one_error_line(capsys, ["--runtime", "single-process", "--preset", "tiny", "--dataset", "folder",
                                   "--data-dir", str(tmp_path)])
    assert "b.png is 8x9x1 but a.png is 8x8x1" in line


def test_the_real_process_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), "--preset", "tiny", "--set", "mdp.horizon=-2"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: mdp.horizon must be a positive integer, got -2"
