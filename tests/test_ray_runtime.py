"""The distributed runtime as a user runs it: launch.py with a local Ray on 2 CPUs, tiny preset.

Metrics are read over HTTP from --metrics-port while the run is going; stopping uses real signals.
"""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from buffers.tables import ReplayTables
from buffers.replay_files import read_shard
from common.storage.checkpoint import complete_checkpoints, load_checkpoint
from common.method.config import ExperimentConfig
from common.storage.messages import TrajectorySpec
from tests.helpers import free_port, metric, read_log, run_launch, scrape, start_launch, stop_process, wait_for

pytestmark = pytest.mark.slow


def tiny_args(data_dir, *extra) -> list[str]:
    return ["--preset", "tiny", "--data-dir", str(data_dir), "--num-goals", "512", "--num-actors", "2",
            "--progress-every", "2", *extra]


def test_run_trains_and_metrics_show_throughput(data_dir, tmp_path):
    port = free_port()
    process = start_launch(tiny_args(data_dir, "--metrics-port", str(port), "--total-updates", "100000",
                                     "--eval-every", "5", "--checkpoint-dir", str(tmp_path / "run")),
                           tmp_path / "log.txt")
    try:
        first = wait_for(lambda: _with_losses(scrape(port)), 120, what="first losses on the metrics endpoint")
        wait_for(lambda: metric(scrape(port), "gcrl_learner_updates_total", kind="proposal") >= 300, 180,
                 what="300 proposal updates")
        last = scrape(port)
    finally:
        code = stop_process(process, signal.SIGTERM)
    log = (tmp_path / "log.txt").read_text()
    assert code == 0, log[-3000:]
    assert metric(last, "gcrl_env_steps_total") > 0 and metric(last, "gcrl_trajectories_total") > 0
    assert metric(last, "gcrl_learner_updates_total", kind="q") > 0
    assert metric(last, "gcrl_replay_size", shard=0, memory="gc_transitions") > 0
    assert metric(last, "gcrl_weight_version") >= 1 and metric(last, "gcrl_weight_lag_count") > 0
    assert metric(last, "gcrl_loss", kind="proposal") < 0.9 * metric(first, "gcrl_loss", kind="proposal")
    assert "stopped by SIGTERM" in log
    assert 0 < metric(last, "gcrl_eval_reconstruction_mse") < 4 and metric(last, "gcrl_eval_updates") > 0
    evaluations = sorted((tmp_path / "run" / "eval").glob("eval-*.json"))
    assert evaluations and (tmp_path / "run" / "eval" / evaluations[0].name.replace(".json", ".png").replace(
        "eval-", "samples-")).exists()
    log = read_log(tmp_path / "run" / "tb")  # the driver's TensorBoard log: the same tags as one process writes
    assert {"loss/proposal", "throughput/updates_per_second", "replay/gc_transitions", "weights/staleness",
            "ray/learner_restarts", "eval/reconstruction_mse"} <= set(log.Tags()["scalars"])
    assert {"eval/samples", "eval/reconstructions"} <= set(log.Tags()["images"])


def _with_losses(samples: dict) -> dict | None:
    return samples if metric(samples, "gcrl_loss", kind="proposal") > 0 else None


def test_checkpoint_then_resume_restores_updates_and_replay(data_dir, tmp_path):
    checkpoints = tmp_path / "ckpt"
    run_launch(tiny_args(data_dir, "--metrics-port", "-1", "--total-updates", "120", "--checkpoint-dir",
                         str(checkpoints)), tmp_path / "first.txt")
    saved = load_checkpoint(checkpoints)
    assert saved.manifest["updates"] == 120 and saved.learner_state()["learner"]["counts"]["steps"] == 120
    saved_sizes = _replay_sizes(saved)
    text = run_launch(tiny_args(data_dir, "--metrics-port", "-1", "--total-updates", "200", "--checkpoint-dir",
                                str(checkpoints), "--resume"), tmp_path / "second.txt")
    assert f"resuming from {saved.path} at update 120" in text
    restored = re.search(r"replay restored: shard 0 (\{.*\})", text)
    assert restored and ast.literal_eval(restored.group(1)) == saved_sizes
    final = load_checkpoint(checkpoints)
    assert final.manifest["updates"] == 200
    assert final.learner_state()["learner"]["counts"]["steps"] == 200
    assert [p.name for p in complete_checkpoints(checkpoints)] == ["update-000000120", "update-000000200"]
    losses = [event.step for event in read_log(checkpoints / "tb").Scalars("loss/proposal")]
    assert losses == sorted(set(losses)) and losses[-1] == 200 and 120 in losses  # one curve across the resume


def test_either_runtime_resumes_the_others_checkpoint(data_dir, tmp_path):
    """With the averaged S-agent on, so its weights travel between the runtimes too."""
    checkpoints = tmp_path / "ckpt"
    averaging = ["--set", "learning.averaging_rate=0.05"]
    single = ["--runtime", "single-process", "--checkpoint-dir", str(checkpoints), *averaging]
    run_launch(tiny_args(data_dir, *single, "--total-updates", "40"), tmp_path / "single.txt")
    saved_sizes = _replay_sizes(load_checkpoint(checkpoints))
    text = run_launch(tiny_args(data_dir, "--metrics-port", "-1", "--checkpoint-dir", str(checkpoints), "--resume",
                                "--total-updates", "80", *averaging), tmp_path / "ray.txt")
    restored = re.search(r"replay restored: shard 0 (\{.*\})", text)
    assert restored and ast.literal_eval(restored.group(1)) == saved_sizes
    by_ray = load_checkpoint(checkpoints)
    assert by_ray.manifest["runtime"] == "ray"
    learner = by_ray.learner_state()["learner"]
    averaged, online = learner["averaged"]["proposal"], learner["agent"]
    assert any(not torch.equal(v, online[f"proposal.{k}"]) for k, v in averaged.items())  # the Ray learner kept both
    text = run_launch(tiny_args(data_dir, *single, "--resume", "--total-updates", "100"), tmp_path / "back.txt")
    assert "at update 80" in text and load_checkpoint(checkpoints).manifest["updates"] == 100


def _replay_sizes(checkpoint) -> dict[str, int]:
    config = ExperimentConfig.from_dict(checkpoint.manifest["config"])
    dataset = checkpoint.manifest["dataset"]
    spec = TrajectorySpec(tuple(dataset["image_shape"]), config.mdp.horizon, config.mdp.num_proposals,
                          dataset["size"])
    tables = ReplayTables(config.replay, spec, config.learning.q_batch, 1)
    read_shard(tables, checkpoint.path, 0, checkpoint.replay_shards[0])
    assert tables.gc_transitions.size > 0
    return tables.sizes()


def test_sigint_writes_a_checkpoint_that_resumes(data_dir, tmp_path):
    checkpoints = tmp_path / "ckpt"
    port = free_port()
    process = start_launch(tiny_args(data_dir, "--metrics-port", str(port), "--total-updates", "100000",
                                     "--checkpoint-dir", str(checkpoints)), tmp_path / "log.txt")
    try:
        wait_for(lambda: metric(scrape(port), "gcrl_learner_updates_total", kind="q") >= 50, 180, what="50 updates")
    finally:
        code = stop_process(process, signal.SIGINT)
    assert code == 0, (tmp_path / "log.txt").read_text()[-3000:]
    saved = load_checkpoint(checkpoints)
    assert saved.manifest["updates"] >= 50 and saved.manifest["runtime"] == "ray"
    state = saved.learner_state()
    assert set(state) >= {"learner", "x1", "counters", "rng", "weight_version"}
    assert isinstance(state["learner"]["target_q"], dict) and torch.is_tensor(state["x1"])


@pytest.fixture
def ray_started_cluster(tmp_path):
    """A head node started with `ray start`, as `ray up` leaves on a cluster's head (loopback only)."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=4", "--include-dashboard=false"],
                   check=True, capture_output=True, timeout=120)
    yield port
    subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)


def test_without_address_a_run_joins_the_cluster_ray_start_made(ray_started_cluster, data_dir, tmp_path):
    text = run_launch(tiny_args(data_dir, "--metrics-port", "-1", "--total-updates", "30"), tmp_path / "log.txt")
    assert "joined the Ray cluster at auto" in text and "started a local Ray" not in text
    assert "done: 30 updates" in text


def test_default_flags_place_every_process_and_train(data_dir, tmp_path):
    """No --num-actors: the local Ray must be big enough for the placement the defaults resolve to."""
    text = run_launch(["--preset", "tiny", "--data-dir", str(data_dir), "--num-goals", "512", "--metrics-port", "-1",
                       "--total-updates", "40", "--progress-every", "2"], tmp_path / "log.txt", timeout=240)
    assert "done: 40 updates" in text and "actors acting 0/" not in text.splitlines()[-2]
