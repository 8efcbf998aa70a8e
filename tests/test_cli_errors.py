"""Bad input stops with one clear line naming the value and what was expected (exit status 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import launch
from deploy.cli import build_parser, parse_train
from common.errors import ConfigError
from deploy.placement import (OVERSUBSCRIPTION, Placement, check_local_placement, report_cluster_shortfall,
                              resolve_placement)
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
    (["--set", "mdp.num_proposals=-3"], "mdp.num_proposals must be an integer >= 2"),
    (["--set", "mdp.num_proposals=1"], "nothing to choose), got 1"),
    (["--set", "mdp.sigma=0"], "mdp.sigma must be a positive number, got 0"),
    (["--set", "mdp.sigma=-1.5"], "got -1.5"),
    (["--set", "learning.q_batch=0"], "learning.q_batch must be a positive integer, got 0"),
    (["--set", "learning.proposal_batch=-8"], "got -8"),
    (["--set", "learning.q_lr=0"], "learning.q_lr must be a positive number, got 0"),
    (["--set", "learning.selection_lr=-0.001"], "got -0.001"),
    (["--set", "learning.rho=1.5"], "learning.rho must be a number in (0, 1], got 1.5"),
    (["--set", "acting.kappa=-0.1"], "acting.kappa must be a number >= 0, got -0.1"),
    (["--set", "acting.behaviour=greedy"], "acting.behaviour must be one of q, lookahead, afterstate, got 'greedy'"),
    (["--set", "acting.beam_width=0"], "acting.beam_width must be a positive integer, got 0"),
    (["--set", "acting.bf16=maybe"], "acting.bf16 must be true, false or auto, got 'maybe'"),
    (["--set", "learning.bf16=1"], "learning.bf16 must be true, false or auto, got 1"),
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
    assert "mdp.num_proposals must be an integer >= 2" in line and "got 0" in line
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
    from common.storage.data import load_goals

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


def test_image_folder_too_small_for_the_unet_says_the_smallest_size(capsys, tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("L", (1, 1), i).save(tmp_path / f"{i}.png")
    line = one_error_line(capsys, ["--preset", "tiny", "--dataset", "folder", "--data-dir", str(tmp_path)])
    assert "images of 1x1 pixels are too small" in line and "at least 8 pixels" in line


@pytest.mark.parametrize("runtime", ["single-process", "ray"])
def test_checkpoint_dir_under_a_file_is_one_line_before_anything_starts(capsys, tmp_path, data_dir, runtime):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    line = one_error_line(capsys, ["--runtime", runtime, "--preset", "tiny", "--data-dir", str(data_dir),
                                   "--checkpoint-dir", str(blocker / "run")])
    assert f"--checkpoint-dir {blocker / 'run'}: cannot create or write there: {blocker} is not a folder" in line
    assert blocker.read_text() == "keep me"


def test_the_real_process_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), "--preset", "tiny", "--set", "mdp.horizon=-2"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: mdp.horizon must be a positive integer, got -2"


# One bad value per numeric training flag (two where both ends or NaN/inf can go wrong), and what the line expects.
BAD_NUMBERS = [
    ("--num-goals", "0", "positive integer"),
    ("--total-updates", "-3", "positive integer"),
    ("--time-limit", "0", "positive number"),
    ("--time-limit", "nan", "positive number"),
    ("--checkpoint-every", "inf", "positive number"),
    ("--keep-checkpoints", "0", "positive integer"),
    ("--seed", "-1", "[0, 4294967295]"),
    ("--seed", "4294967296", "[0, 4294967295]"),
    ("--threads", "0", "positive integer"),
    ("--progress-every", "nan", "positive number"),
    ("--log-every", "0", "positive number"),
    ("--eval-every", "-5", ">= 0"),
    ("--eval-every", "inf", ">= 0"),
    ("--eval-test-goals", "0", "positive integer"),
    ("--eval-fid-samples", "-1", ">= 0"),
    ("--num-actors", "0", "positive integer"),
    ("--num-actors", "-4", "positive integer"),
    ("--num-replay-shards", "0", "positive integer"),
    ("--actor-cpus", "0", "positive number"),
    ("--actor-cpus", "nan", "positive number"),
    ("--actor-cpus", "0.00001", "at least 0.0001"),
    ("--actor-gpus", "-0.5", ">= 0"),
    ("--actor-gpus", "inf", ">= 0"),
    ("--eval-cpus", "-1", ">= 0"),
    ("--eval-gpus", "nan", ">= 0"),
    ("--learner-cpus", "-1", "positive number"),
    ("--learner-gpus", "-1", ">= 0"),
    ("--learner-gpus", "nan", ">= 0"),
    ("--metrics-port", "99999", "[-1, 65535] (-1: off, 0: any free port)"),
    ("--metrics-port", "-2", "[-1, 65535]"),
    ("--publish-every", "0", "positive integer"),
    ("--max-learner-restarts", "-1", "integer >= 0"),
]


@pytest.mark.parametrize("flag, value, expected", BAD_NUMBERS)
def test_bad_number_is_one_line_naming_flag_value_and_expectation(capsys, flag, value, expected):
    line = one_error_line(capsys, ["--preset", "tiny", flag, value])
    assert line.startswith(f"error: {flag} must be ") and expected in line
    assert line.endswith(f"got {value}") or line.endswith(f"got {float(value)!r}"), line


def test_every_numeric_flag_has_a_bad_value_case():
    numeric = {action.option_strings[0] for action in build_parser("test")._actions if action.type in (int, float)}
    assert numeric == {flag for flag, _, _ in BAD_NUMBERS}


@pytest.mark.parametrize("flags", [
    ["--metrics-port", "-1"], ["--metrics-port", "0"], ["--metrics-port", "65535"], ["--seed", "0"],
    ["--seed", "4294967295"], ["--max-learner-restarts", "0"], ["--actor-gpus", "0"], ["--learner-gpus", "0"],
    ["--actor-cpus", "0.0001"], ["--num-actors", "1"],
])
def test_edge_values_are_accepted(flags):
    command = parse_train(["--preset", "tiny", *flags], "test")
    name = flags[0][2:].replace("-", "_")
    owners = [part for part in (command.run, command.ray, command.data, command.evaluation) if hasattr(part, name)]
    assert len(owners) == 1 and getattr(owners[0], name) == float(flags[1])


def test_max_learner_restarts_defaults_to_three_and_num_actors_to_none():
    settings = parse_train(["--preset", "tiny"], "test").ray
    assert settings.max_learner_restarts == 3 and settings.num_actors is None


def placement(actors=1, shards=1, actor_cpus=1.0, actor_gpus=0.0, learner_cpus=1.0, learner_gpus=0.0) -> Placement:
    return Placement(actors, shards, actor_cpus, actor_gpus, learner_cpus, learner_gpus)


def test_local_placement_up_to_the_oversubscription_limit_is_accepted():
    assert OVERSUBSCRIPTION == 4
    check_local_placement(placement(actors=6), cpus=2, gpus=0)  # 6 + 1 + 0.25 = 7.25 <= 4 x 2
    check_local_placement(placement(actors=3, actor_gpus=0.25, learner_gpus=0.25), cpus=2, gpus=1)


def test_local_placement_past_the_oversubscription_limit_is_refused_in_one_line():
    with pytest.raises(ConfigError) as info:
        check_local_placement(placement(actors=7), cpus=2, gpus=0)  # 8.25 CPUs > 8
    message = str(info.value)
    assert "\n" not in message and message.startswith("--num-actors 7 x --actor-cpus 1 ")
    assert "asks 8.25 CPUs" in message and "2 cores (at most 4x oversubscribed: 8 CPUs)" in message
    with pytest.raises(ConfigError, match="--num-actors 100000 .* asks 100001.25 CPUs"):
        check_local_placement(placement(actors=100000), cpus=16, gpus=0)
    with pytest.raises(ConfigError, match="--actor-cpus 3 .* 2 cores"):
        check_local_placement(placement(actors=3, actor_cpus=3.0), cpus=2, gpus=0)


def test_local_placement_with_more_gpus_than_exist_is_refused_in_one_line():
    with pytest.raises(ConfigError) as info:
        check_local_placement(placement(actors=2, actor_gpus=0.5, learner_gpus=1.0), cpus=8, gpus=1)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("--learner-gpus 1 + --num-actors 2 x --actor-gpus 0.5 asks 2 GPUs, but this machine has "
                              "1 GPU")
    with pytest.raises(ConfigError, match="asks 1 GPU, but this machine has 0 GPUs"):
        check_local_placement(placement(learner_gpus=1.0), cpus=8, gpus=0)


def test_cluster_shortfall_is_a_waiting_line_not_an_error():
    wanted = placement(actors=64, shards=4, learner_cpus=3.0, learner_gpus=1.0)  # 64 + 3 + 1 = 68 CPUs
    assert report_cluster_shortfall(wanted, {"CPU": 16.0}) == (
        "waiting for the cluster's autoscaler: the run asks 68 CPUs and 1 GPU, the cluster has 16 CPUs and 0 GPUs now")
    assert report_cluster_shortfall(wanted, {"CPU": 68.0, "GPU": 1.0}) is None
    assert "has 100 CPUs and 0 GPUs now" in report_cluster_shortfall(wanted, {"CPU": 100.0})
    assert report_cluster_shortfall(placement(actors=2, actor_cpus=0.5), {"CPU": 2.5}) is None


def test_resolved_placement_is_not_refused_for_a_cluster_that_may_grow():
    settings = parse_train(["--preset", "tiny", "--learner-gpus", "2", "--num-actors", "50"], "test").ray
    chosen = resolve_placement(settings, {"CPU": 4.0})
    assert (chosen.num_actors, chosen.learner_gpus) == (50, 2.0)
    default = resolve_placement(parse_train(["--preset", "tiny"], "test").ray, {"CPU": 8.0, "GPU": 1.0})
    assert (default.num_actors, default.learner_gpus) == (6, 1.0)  # 8 - learner 1 - shard 0.25, floored


def _launch(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", RAY_TMPDIR=str(tmp_path))  # no `ray start` record here: a local Ray is meant
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("flags, line", [
    (["--metrics-port", "99999"],
     "error: --metrics-port must be an integer in [-1, 65535] (-1: off, 0: any free port), got 99999"),
    (["--num-actors", "0"], "error: --num-actors must be a positive integer, got 0"),
])
def test_the_real_process_refuses_a_bad_ray_flag_in_one_line(tmp_path, flags, line):
    result = _launch(["--preset", "tiny", *flags], tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == line


def test_a_local_ray_refuses_a_placement_it_can_never_satisfy_before_starting(tmp_path, data_dir):
    result = _launch(["--preset", "tiny", "--data-dir", str(data_dir), "--num-goals", "512", "--eval-every", "0",
                      "--metrics-port", "-1", "--num-actors", "100000"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --num-actors 100000 x --actor-cpus 1 "), lines
    assert f"{os.cpu_count()} cores (at most 4x oversubscribed" in lines[0]
    assert "started a local Ray" not in result.stdout
