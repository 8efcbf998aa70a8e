"""The evaluation actor: the periodic evaluation (--eval-every) beside the learner, so learning never pauses.

A thin Ray wrapper of evaluation/periodic.py's WeightsEvaluator. Like a rollout actor it finds the
coordinator by name and reads there the training images (the FID reference), the test batch the driver
posted and the newest published weights; its loop runs in a thread started by
the constructor, so a restarted actor resumes by itself. Every --eval-every seconds it evaluates the
newest weights it has not evaluated yet and keeps the result until the driver reads it with `results()`.
A failure of the loop is kept and reported by `stats()`, so the driver fails loudly rather than going
on without evaluations. EvaluationClient is the driver's side: it reads both without ever waiting.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
import uuid
from dataclasses import replace

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from common.device import reserved_device
from common.method.config import ExperimentConfig
from evaluation.periodic import EvaluationRequest, evaluator_from_request
from actors.names import NAMESPACE, PEER_FAILURES, RunNames

POLL_SECONDS = 0.25  # how often the loop looks at its clock


@ray.remote(max_restarts=-1, max_concurrency=2)
class EvaluationActor:
    """Evaluates the newest published weights every --eval-every seconds, in a thread of its own."""

    def __init__(self, names: RunNames, request: EvaluationRequest, config: ExperimentConfig, x1: np.ndarray):
        """`request` comes without its pixels, which the coordinator holds: arguments this small are kept
        with the actor, so Ray can restart it from them."""
        torch.set_num_threads(max(1, int(request.cpus)))
        self.coordinator = ray.get_actor(names.coordinator, namespace=NAMESPACE)
        self.incarnation, self.error, self.evaluator = uuid.uuid4().hex, None, None
        self.evaluating_since: float | None = None  # Unix time the running evaluation began
        self._results: list[dict] = []
        self._count = 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run_safely, args=(request, config, x1),
                                        name="evaluation", daemon=True)
        self._thread.start()

    def _run_safely(self, request: EvaluationRequest, config: ExperimentConfig, x1: np.ndarray) -> None:
        try:
            self._run(request, config, x1)
        except Exception:  # reported through stats() so the driver can fail loudly
            self.error = traceback.format_exc(limit=8)

    def _run(self, request: EvaluationRequest, config: ExperimentConfig, x1: np.ndarray) -> None:
        goal_images = ray.get(ray.get(self.coordinator.goals.remote())[0])  # [N, C, H, W] uint8, read-only
        request = replace(request, test_images=ray.get(ray.get(self.coordinator.test_images.remote())[0]))
        device = reserved_device(request.gpus, "evaluation")
        self.evaluator = evaluator_from_request(request, config, goal_images, x1, device)
        while not self._stop.wait(POLL_SECONDS):
            if not self.evaluator.due():
                continue
            version, weights, stopped = ray.get(self.coordinator.latest.remote())
            if stopped:
                break
            if weights and self.evaluator.is_new(version):
                self._evaluate(weights[-1])  # the averaged S-agent's, when the learner posts them

    def _evaluate(self, weights_ref) -> None:
        self.evaluating_since = time.time()
        result = self.evaluator.evaluate(ray.get(weights_ref))
        with self._lock:
            self._results.append(result)
            self._count += 1
        self.evaluating_since = None

    def results(self) -> list[dict]:
        """The evaluations finished since the last call (see WeightsEvaluator.evaluate for their fields)."""
        with self._lock:
            results, self._results = self._results, []
        return results

    def stats(self) -> dict:
        """Who this incarnation is, how far it got, and its error (a traceback) if its loop died."""
        with self._lock:
            count = self._count
        device = str(self.evaluator.evaluation.device) if self.evaluator is not None else None
        return {"incarnation": self.incarnation, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "error": self.error, "evaluations": count, "evaluating_since": self.evaluating_since,
                "version": self.evaluator.version if self.evaluator is not None else -1, "device": device}

    def stop(self) -> None:
        """End the loop after the running evaluation."""
        self._stop.set()
        self._thread.join(timeout=60)


class EvaluationClient:
    """The driver's side of the evaluation actor (or of none): reads results and errors, never waits.

    One (stats, results) pair of calls is in flight at a time; a pair not answered yet is kept for the
    next `collect`, so a busy actor costs the driver at most `timeout` per poll.
    """

    def __init__(self, actor=None, metrics=None):
        self.actor, self.metrics = actor, metrics  # metrics: RunMetrics, whose restart counter a restart bumps
        self._pending: list = []  # [stats ref, results ref]
        self._incarnation: str | None = None

    def collect(self, timeout: float = 0.05) -> list[dict]:
        """Evaluations finished since the last answer; [] while a call is unanswered or the actor restarts.

        Raises RuntimeError with the actor's traceback when its loop failed.
        """
        if self.actor is None:
            return []
        if not self._pending:
            self._pending = [self.actor.stats.remote(), self.actor.results.remote()]
        ready, _ = ray.wait(self._pending, num_returns=len(self._pending), timeout=timeout)
        if len(ready) < len(self._pending):
            return []
        refs, self._pending = self._pending, []
        try:
            stats, results = ray.get(refs)
        except PEER_FAILURES:  # it died; Ray restarts it, and what it had not handed over is lost
            return []
        self._check(stats)
        return results

    def _check(self, stats: dict) -> None:
        if stats["error"]:
            raise RuntimeError(f"evaluation actor (pid {stats['pid']}) failed:\n{stats['error']}")
        if self._incarnation not in (None, stats["incarnation"]) and self.metrics is not None:
            self.metrics.restarts.labels(role="evaluation").inc()
        self._incarnation = stats["incarnation"]

    def close(self) -> None:
        """End the actor for good (an evaluation under way is abandoned; its files may be partly written)."""
        if self.actor is not None:
            ray.kill(self.actor, no_restart=True)


def start_evaluation(names: RunNames, request: EvaluationRequest, config: ExperimentConfig, x1: np.ndarray,
                     metrics=None) -> EvaluationClient:
    """Start the run's evaluation actor and return the driver's client for it.

    It is placed on the driver's node when that node can hold it, so <checkpoint-dir>/eval/ lands beside
    the checkpoints the driver writes; elsewhere otherwise (then the files are on that node).
    """
    coordinator = ray.get_actor(names.coordinator, namespace=NAMESPACE)
    ray.get(coordinator.post_test_batch.remote([ray.put(request.test_images)]))  # [B, C, H, W] uint8
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = EvaluationActor.options(name=names.evaluation, num_cpus=request.cpus, num_gpus=request.gpus,
                                    scheduling_strategy=here).remote(names, replace(request, test_images=None),
                                                                     config, x1)
    return EvaluationClient(actor, metrics)
