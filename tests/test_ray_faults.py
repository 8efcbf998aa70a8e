"""Faults on a real local Ray: dead actors and shards come back and training goes on; bad messages bounce.

The run is driven in this process (the same loop steps the driver uses), so the test can kill actors
by name between slices and read the run's own Prometheus registry.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import ray

from buffers.shard import ReplayShard
from deploy.cli import parse_train
from common.storage.data import load_goals
from common.errors import MessageError
from common.storage.messages import TrajectoryBatch, pack_arrays
from common.method.presets import tiny
from actors.names import NAMESPACE
from learner.builder import Builder
from deploy.ray_driver import DistributedRun, resolve_placement
from tests.helpers import drive

pytestmark = pytest.mark.slow


@pytest.fixture
def run(local_ray, data_dir):
    command = parse_train(["--preset", "tiny", "--num-actors", "2", "--num-replay-shards", "2", "--metrics-port",
                           "-1", "--total-updates", "1000000", "--progress-every", "1000"], "test")
    goals = load_goals("mnist", data_dir).subset(512)
    distributed = DistributedRun(command, goals, resolve_placement(command.ray, ray.cluster_resources()))
    yield distributed
    distributed.finish()


def sample(run, name: str, **labels) -> float:
    return run.metrics.registry.get_sample_value(name, labels) or 0.0


def test_killing_a_rollout_actor_keeps_training_and_counts_the_restart(run):
    drive(run, lambda: run.counters.updates >= 20, 120, "20 updates")
    updates_at_kill, version_at_kill = run.counters.updates, run.metrics.latest_version
    ray.kill(ray.get_actor(run.names.rollout(0), namespace=NAMESPACE), no_restart=False)
    drive(run, lambda: sample(run, "gcrl_actor_restarts_total", role="rollout") >= 1, 120, "the restart")
    drive(run, lambda: _actor(run, 0)["env_steps"] > 0, 120, "the restarted actor to act")
    assert run.counters.updates > updates_at_kill
    assert _actor(run, 0)["weight_version"] >= version_at_kill  # it came back with current weights


def _actor(run, index: int) -> dict:
    return ray.get(run.actors[index].stats.remote())


def test_killing_a_replay_shard_without_checkpoints_restarts_it_empty_and_it_refills(run):
    drive(run, lambda: min(_shard(run, i)["sizes"]["gc_transitions"] for i in (0, 1)) > 0, 120, "both shards fill")
    first = _shard(run, 1)
    os.kill(first["pid"], signal.SIGKILL)  # as the OOM killer or a lost node would
    drive(run, lambda: _incarnation(run, 1) not in (None, first["incarnation"]), 60, "the shard to restart")
    updates_after_restart = run.counters.updates
    drive(run, lambda: _shard(run, 1)["sizes"]["gc_transitions"] > 0 and _shard(run, 1)["inserts"] > 0, 120,
          "the restarted shard to refill")
    drive(run, lambda: run.counters.updates > updates_after_restart, 60, "training to go on")
    assert sample(run, "gcrl_actor_restarts_total", role="replay") >= 1
    assert _shard(run, 1)["inserts"] < first["inserts"] + 10_000  # counted afresh: it restarted from nothing
    assert _shard(run, 1)["refilled_from"] is None  # no --checkpoint-dir: nothing to refill from


def _shard(run, index: int) -> dict:
    return ray.get(run.shards[index].stats.remote())


def _incarnation(run, index: int):
    try:
        return _shard(run, index)["incarnation"]
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
        return None


def _batch(spec, episodes: int = 4, selection: int = 1) -> TrajectoryBatch:
    rng = np.random.default_rng(0)
    return TrajectoryBatch(
        states=rng.standard_normal((episodes, spec.horizon + 1, *spec.image_shape)).astype(np.float32),
        selections=np.full((episodes, spec.horizon), selection, np.int16),
        goal_indices=np.arange(episodes, dtype=np.int64), final_loss=np.ones(episodes, np.float32))


def test_malformed_messages_are_refused_and_the_shard_keeps_its_contents(local_ray, data_dir):
    config, goals = tiny(), load_goals("mnist", data_dir).subset(64)
    builder = Builder.for_goals(config, goals)
    spec, shard = builder.trajectory_spec(), ReplayShard.remote(builder, 1, 0, 0)
    assert ray.get(shard.insert.remote(_batch(spec).to_message()))
    before_stats, before_contents = ray.get(shard.stats.remote()), ray.get(shard.fingerprint.remote())
    good = _batch(spec)
    bad_messages = [b"\x93not msgpack at all", pack_arrays("weights", {"x": np.zeros(2, np.float32)}),
                    _batch(spec, selection=config.mdp.num_proposals).to_message(),  # selection index out of range
                    TrajectoryBatch(good.states[:, :-1], good.selections, good.goal_indices,
                                    good.final_loss).to_message()]  # one state short per episode
    for payload in bad_messages:
        with pytest.raises(MessageError):
            ray.get(shard.insert.remote(payload))
    after_stats = ray.get(shard.stats.remote())
    assert after_stats["refused_messages"] == len(bad_messages)
    assert after_stats["sizes"] == before_stats["sizes"] and after_stats["inserts"] == before_stats["inserts"]
    assert ray.get(shard.fingerprint.remote()) == before_contents
    ray.kill(shard)
