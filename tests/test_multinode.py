"""A head and two worker nodes on one machine (Ray's test-cluster utility), all on 127.0.0.1.

One worker declares a GPU: the learner must land there (it learns on the CPU, as the test GPU is not a
real device). Actors and shards must spread over more than one node, training must progress, and every
rollout actor must receive new weight versions.
"""

from __future__ import annotations

import time

import pytest
import ray
from ray.cluster_utils import Cluster

from deploy.cli import parse_train
from common.storage.data import load_goals
from actors.names import NAMESPACE
from deploy.ray_driver import DistributedRun, resolve_placement

pytestmark = pytest.mark.slow
STORE = 200 * 1024 * 1024


@pytest.fixture
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE})
    gpu_node = cluster.add_node(num_cpus=3, num_gpus=1, object_store_memory=STORE)
    cluster.add_node(num_cpus=3, object_store_memory=STORE)
    ray.init(address=cluster.address, namespace=NAMESPACE, logging_level="ERROR")
    yield cluster, gpu_node.node_id
    ray.shutdown()
    cluster.shutdown()


def test_actors_spread_learner_on_gpu_node_and_every_actor_gets_new_weights(cluster, data_dir):
    _, gpu_node_id = cluster
    command = parse_train(["--preset", "tiny", "--address", "auto", "--num-actors", "4", "--num-replay-shards", "2",
                           "--metrics-port", "-1", "--total-updates", "1000000"], "test")
    placement = resolve_placement(command.ray, ray.cluster_resources())
    assert placement.learner_gpus == 1.0  # the default asks for the GPU the cluster has
    run = DistributedRun(command, load_goals("mnist", data_dir).subset(512), placement)
    try:
        learner = ray.get(run.learner.handle.stats.remote())
        assert learner["node"] == gpu_node_id
        first = _drive_until_all_act(run)
        start_updates = run.counters.updates
        later = _drive_until_all_have_newer_weights(run, first)
        shards = ray.get([s.stats.remote() for s in run.shards])
    finally:
        run.finish()
    nodes = {s["node"] for s in later.values()} | {s["node"] for s in shards}
    assert len(nodes) > 1, nodes
    assert run.counters.updates > start_updates
    for index, stats in later.items():
        assert stats["weight_version"] > first[index]["weight_version"], (index, first[index], stats)


def _drive(run, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run.learn_slice()
        run.poll()


def _actor_stats(run) -> dict:
    return {s["index"]: s for s in ray.get([a.stats.remote() for a in run.actors])}


def _drive_until_all_have_newer_weights(run, first: dict, timeout: float = 300) -> dict:
    """Learn until every actor holds a newer weight version than `first` (bounded in time, not assumed)."""
    deadline = time.monotonic() + timeout
    while True:
        _drive(run, 5)
        stats = _actor_stats(run)
        if all(stats[i]["weight_version"] > first[i]["weight_version"] for i in first):
            return stats
        if time.monotonic() > deadline:
            return stats  # the caller's assertions name the actor that never got new weights


def _drive_until_all_act(run, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _drive(run, 2)
        stats = _actor_stats(run)
        if all(s["env_steps"] > 0 and s["weight_version"] >= 0 for s in stats.values()):
            return stats
    raise AssertionError(f"not every actor acted within {timeout}s")
