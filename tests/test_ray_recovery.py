"""Recovery on a real local Ray: processes killed by PID with SIGKILL, as the OOM killer or a lost node would.

The learner comes back from the newest checkpoint (or from scratch) while shards and rollout actors keep
running; a killed replay shard refills from its part of the newest checkpoint; shards wait on events.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import ray

from buffers.shard import ReplayShard
from common.storage.checkpoint import load_checkpoint
from deploy.cli import parse_train
from common.storage.data import load_goals
from common.storage.messages import TrajectoryBatch
from common.method.presets import tiny
from learner.builder import Builder
from deploy.ray_driver import DistributedRun, resolve_placement
from tests.helpers import drive
from deploy.supervision import LearnerLost

pytestmark = pytest.mark.slow


@pytest.fixture
def start_run(local_ray, data_dir, tmp_path):
    """A factory of tiny Ray runs driven from this process, each released at the end of the test."""
    runs = []

    def start(*extra: str) -> DistributedRun:
        command = parse_train(["--preset", "tiny", "--num-actors", "2", "--num-replay-shards", "2", "--metrics-port",
                               "-1", "--total-updates", "1000000", "--progress-every", "1000", *extra], "test")
        goals = load_goals("mnist", data_dir).subset(512)
        runs.append(DistributedRun(command, goals, resolve_placement(command.ray, ray.cluster_resources())))
        return runs[-1]

    yield start
    for run in runs:
        run.release()


def restarts(run) -> float:
    return run.metrics.registry.get_sample_value("gcrl_learner_restarts_total") or 0.0


def test_a_killed_learner_restarts_from_the_newest_checkpoint_and_actors_follow(start_run, tmp_path, capsys):
    run = start_run("--checkpoint-dir", str(tmp_path / "ckpt"))
    drive(run, lambda: run.counters.updates >= 30, 180, "30 updates")
    saved = load_checkpoint(run.save(), with_replay=False).manifest["updates"]
    drive(run, lambda: run.counters.updates >= saved + 10, 180, "10 more updates")
    before = run.learner.last_steps
    os.kill(ray.get(run.learner.handle.stats.remote())["pid"], signal.SIGKILL)
    drive(run, lambda: restarts(run) == 1, 120, "the learner restart")
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("learner died")][0]
    assert f"at update {saved}: {before - saved} updates lost (restart 1 of 3)" in line
    assert run.learner.updates_lost == before - saved
    version = ray.get(run.learner.handle.stats.remote())["weight_version"]
    drive(run, lambda: run.counters.updates > saved + 5, 180, "learning to go on")
    drive(run, lambda: all(ray.get(a.stats.remote())["weight_version"] >= version for a in run.actors), 120,
          "both actors to load the new learner's weights")


def test_past_the_restart_limit_the_run_ends_naming_the_checkpoint(start_run, tmp_path):
    run = start_run("--checkpoint-dir", str(tmp_path / "ckpt"), "--max-learner-restarts", "0")
    drive(run, lambda: run.counters.updates >= 5, 180, "5 updates")
    path = run.save()
    os.kill(ray.get(run.learner.handle.stats.remote())["pid"], signal.SIGKILL)
    with pytest.raises(LearnerLost, match=f"resume from {path} with --resume --checkpoint-dir"):
        drive(run, lambda: False, 120, "the run to end")


def test_a_killed_learner_without_checkpoints_restarts_from_scratch(start_run, capsys):
    run = start_run()
    drive(run, lambda: run.counters.updates >= 5, 180, "5 updates")
    os.kill(ray.get(run.learner.handle.stats.remote())["pid"], signal.SIGKILL)
    drive(run, lambda: restarts(run) == 1, 120, "the learner restart")
    assert "restarted from scratch (no checkpoint yet) at update 0" in capsys.readouterr().out
    drive(run, lambda: run.counters.updates >= 3, 180, "the new learner to learn")


def test_a_killed_shard_refills_from_its_part_of_the_newest_checkpoint(start_run, tmp_path):
    run = start_run("--checkpoint-dir", str(tmp_path / "ckpt"))
    drive(run, lambda: run.counters.updates >= 10, 180, "10 updates")
    path = run.save()
    saved = ray.get(run.shards[1].stats.remote())
    os.kill(saved["pid"], signal.SIGKILL)
    drive(run, lambda: _incarnation(run, 1) not in (None, saved["incarnation"]), 120, "the shard to restart")
    back = ray.get(run.shards[1].stats.remote())
    assert back["refilled_from"] == path
    assert back["sizes"]["episodes"] >= saved["sizes"]["episodes"] > 0  # what was saved, and what came since
    assert back["inserts"] >= saved["inserts"]  # its limiter's counts came back too


def _incarnation(run, index: int):
    try:
        return ray.get(run.shards[index].stats.remote())["incarnation"]
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
        return None


def _episodes(spec, count: int) -> bytes:
    rng = np.random.default_rng(count)
    return TrajectoryBatch(rng.standard_normal((count, spec.horizon + 1, *spec.image_shape)).astype(np.float32),
                           np.zeros((count, spec.horizon), np.int16), np.arange(count, dtype=np.int64),
                           np.ones(count, np.float32)).to_message()


def test_a_waiting_sample_sleeps_until_an_insert_wakes_it(local_ray, data_dir):
    config, goals = tiny(), load_goals("mnist", data_dir).subset(64)
    builder = Builder.for_goals(config, goals)
    spec, shard = builder.trajectory_spec(), ReplayShard.remote(builder, 1, 0, 0)
    assert ray.get(shard.sample.remote((4, 4, 4), 1.0)) is None  # empty: the limiter refuses for the whole second
    assert ray.get(shard.stats.remote())["limiter_checks"] == 1  # looked once, then slept: no polling
    waiting = shard.sample.remote((4, 4, 4), 120.0)
    needed = -(-config.replay.min_size_to_sample // spec.horizon)
    assert ray.get(shard.insert.remote(_episodes(spec, needed)))
    assert ray.get(waiting, timeout=120) is not None  # woken by the insert, long before its own timeout
    assert ray.get(shard.stats.remote())["limiter_checks"] <= 4
    ray.kill(shard)
