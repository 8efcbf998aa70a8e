"""Evaluation in its own actor: learning goes on while it evaluates, and its figures reach the driver.

The plain WeightsEvaluator is tested in one process; the actor on a real local Ray, alone (its results
and its failure) and inside a DistributedRun driven slice by slice in this process, as the driver loop
does, so the test reads the run's own Prometheus registry and progress line.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
import ray
import torch

from actors.evaluation_actor import start_evaluation
from deploy.cli import parse_train
from common.storage.data import load_goals
from common.errors import MessageError
from common.storage.messages import pack_weights
from common.method.networks import VAgent
from common.method.presets import tiny
from evaluation.periodic import EvalOptions, EvaluationRequest, describe, evaluator_from_request
from actors.names import RunNames
from deploy.coordinator import Coordinator
from deploy.ray_driver import DistributedRun, resolve_placement

pytestmark = pytest.mark.slow

CHEAP = EvalOptions(every=0.5, test_goals=8, fid_samples=0)


@pytest.fixture(scope="module")
def train_goals(data_dir):
    return load_goals("mnist", data_dir).subset(512)


def weights_message(goals, version: int, updates: int | None, seed: int = 1) -> tuple[bytes, VAgent]:
    """A freshly initialised agent's weights as the learner publishes them."""
    torch.manual_seed(seed)
    agent = VAgent(goals.image_shape, tiny().mdp, tiny().network)
    weights = {k: v.detach().numpy() for k, v in agent.state_dict().items()}
    return pack_weights(weights, version, updates), agent


def test_the_plain_evaluator_labels_results_with_the_messages_updates(train_goals, data_dir, tmp_path):
    request = EvaluationRequest.load(CHEAP, "mnist", data_dir, tmp_path)
    x1 = np.zeros(train_goals.image_shape, np.float32)
    evaluator = evaluator_from_request(request, tiny(), train_goals.images.numpy(), x1, torch.device("cpu"))
    payload, source = weights_message(train_goals, version=3, updates=41)
    assert evaluator.is_new(3)
    result = evaluator.evaluate(payload)
    assert result["updates"] == 41 and result["version"] == 3 and result["sample_fid"] is None
    assert 0 < result["reconstruction_mse"] < 4 and result["seconds"] > 0
    assert all(torch.equal(a, b) for a, b in zip(evaluator.agent.state_dict().values(), source.state_dict().values()))
    written = json.loads((tmp_path / "eval" / "eval-41.json").read_text())
    assert written["num_test"] == 8 and written["reconstruction_mse"] == result["reconstruction_mse"]
    assert (tmp_path / "eval" / "samples-41.png").exists() and not evaluator.is_new(3)
    with pytest.raises(MessageError, match="no update count"):
        evaluator.evaluate(weights_message(train_goals, version=4, updates=None)[0])


@pytest.fixture
def published(local_ray, train_goals):
    """A coordinator of a run of its own, with one weights version (published at update 5) posted as a learner with
    averaging posts it: the acting weights, then the averaged S-agent's (here another agent's, to tell them apart)."""
    names = RunNames(uuid.uuid4().hex[:8], 1)
    coordinator = Coordinator.options(name=names.coordinator).remote([ray.put(train_goals.images.numpy())])
    acting, averaged = (weights_message(train_goals, version=0, updates=5, seed=seed)[0] for seed in (1, 2))
    ray.get(coordinator.publish.remote(0, [ray.put(acting), ray.put(averaged)]))
    yield names, {"acting": acting, "averaged": averaged}
    ray.kill(coordinator)


def collect_until(client, done, timeout: float = 120) -> list[dict]:
    """Poll the client as the driver does, until `done(results so far)`."""
    results, deadline = [], time.monotonic() + timeout
    while not done(results):
        assert time.monotonic() < deadline, f"no evaluation within {timeout}s"
        results += client.collect()
        time.sleep(0.2)
    return results


def test_the_actor_evaluates_the_published_averaged_weights(published, train_goals, data_dir, tmp_path):
    names, payloads = published
    request = EvaluationRequest.load(CHEAP, "mnist", data_dir, tmp_path)
    client = start_evaluation(names, request, tiny(), np.zeros(train_goals.image_shape, np.float32))
    try:
        results = collect_until(client, lambda found: found)
        stats = ray.get(client.actor.stats.remote())
    finally:
        client.close()
    assert [r["updates"] for r in results] == [5] and 0 < results[0]["reconstruction_mse"] < 4
    assert stats["error"] is None and stats["evaluations"] == 1 and stats["device"] == "cpu" and stats["pid"] > 0
    assert (tmp_path / "eval" / "eval-5.json").exists()  # the same version is not evaluated twice
    x1, expected = np.zeros(train_goals.image_shape, np.float32), {}
    for name, payload in payloads.items():  # each message evaluated in this process
        plain = EvaluationRequest.load(CHEAP, "mnist", data_dir, tmp_path / name)
        evaluator = evaluator_from_request(plain, tiny(), train_goals.images.numpy(), x1, torch.device("cpu"))
        expected[name] = evaluator.evaluate(payload)["reconstruction_mse"]
    assert expected["acting"] != expected["averaged"]
    assert results[0]["reconstruction_mse"] == pytest.approx(expected["averaged"], rel=1e-6)


def test_a_failing_evaluation_is_reported_with_its_traceback(published, train_goals, data_dir, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    request = EvaluationRequest.load(CHEAP, "mnist", data_dir, blocked)
    client = start_evaluation(published[0], request, tiny(), np.zeros(train_goals.image_shape, np.float32))
    try:
        with pytest.raises(RuntimeError, match=r"evaluation actor \(pid \d+\) failed(?s:.*)NotADirectoryError"):
            collect_until(client, lambda found: False)
    finally:
        client.close()


@pytest.fixture
def run(local_ray, train_goals, data_dir, tmp_path):
    """A DistributedRun whose evaluation (3000 test goals: seconds, so learner slices end during it) is due
    every 2 s."""
    command = parse_train(["--preset", "tiny", "--num-actors", "1", "--num-replay-shards", "1", "--metrics-port", "-1",
                           "--total-updates", "1000000", "--progress-every", "1000", "--checkpoint-dir",
                           str(tmp_path / "run"), "--eval-every", "2", "--eval-test-goals", "3000",
                           "--eval-fid-samples", "0"], "test")
    request = EvaluationRequest.load(command.evaluation, "mnist", data_dir, command.run.checkpoint_dir)
    distributed = DistributedRun(command, train_goals, resolve_placement(command.ray, ray.cluster_resources()),
                                 None, request)
    yield distributed
    distributed.finish()


def learned_during(result: dict, slices: list[tuple[float, int]]) -> bool:
    """Two learner slices ended while this evaluation ran, the second with more learner steps."""
    inside = [steps for ended, steps in slices if result["finished"] - result["seconds"] < ended < result["finished"]]
    return len(inside) >= 2 and inside[-1] > inside[0]


def test_learning_goes_on_while_the_actor_evaluates(run):
    slices, texts, results = [], [], run.evaluated
    deadline = time.monotonic() + 400
    while not (any(learned_during(r, slices) for r in results) and any(r["updates"] > 0 for r in results)):
        assert time.monotonic() < deadline, f"after 400s: {len(results)} evaluations, {len(slices)} slices"
        steps = run.learn_slice()
        slices.append((time.time(), steps))
        run.poll()
        texts += [describe(result) for result in run.evaluations()]  # what the run loop prints, a line each
    gauge = run.metrics.registry.get_sample_value
    assert 0 < gauge("gcrl_eval_reconstruction_mse") < 4 and gauge("gcrl_eval_updates") == results[-1]["updates"] > 0
    folder = run.checkpoint_dir / "eval"
    for result in results:
        assert json.loads((folder / f"eval-{result['updates']}.json").read_text())["num_test"] == 3000
        assert (folder / f"samples-{result['updates']}.png").exists()
    assert texts[-1] == f"eval: recon MSE {results[-1]['reconstruction_mse']:.4f} (weights of update {results[-1]['updates']})"
