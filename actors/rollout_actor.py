"""The rollout actor: a thin Ray wrapper that runs RolloutWorker in a loop and feeds the replay shards.

Its loop runs in a thread started by the constructor, so when Ray restarts a dead actor the loop
comes back by itself, with the newest weights. Weights are fetched only when the posted version
changed; each batch records how many versions behind it acted; sends are msgpack bytes with a
bounded number in flight, so a slow learner slows actors instead of filling memory.
"""

from __future__ import annotations

import os
import threading
import traceback
import uuid
from dataclasses import dataclass

import numpy as np
import ray
import torch

from actors.names import PEER_FAILURES, RunNames
from common.device import reserved_device
from learner.builder import Builder


@dataclass(frozen=True)
class ActorSettings:
    """Per-actor knobs set by the driver from the command line."""

    max_in_flight: int = 2  # sends awaiting a shard's answer
    insert_timeout: float = 1.0  # seconds a shard may hold a send while its learner catches up
    gpus: float = 0.0  # what Ray reserved for it: the GPU is used when this process sees CUDA
    threads: int = 1  # torch threads: one per CPU the actor reserved
    seed: int = 0


@dataclass
class ActorCounters:
    """What the driver reads for the metrics: counts since start, lags since the last read."""

    env_steps: int = 0
    trajectories: int = 0
    dropped_batches: int = 0


@ray.remote(max_restarts=-1, max_concurrency=2)
class RolloutActor:
    """Algorithm 1 for batches of goals, forever, with periodically refreshed weights."""

    def __init__(self, index: int, builder: Builder, x1: np.ndarray, names: RunNames, settings: ActorSettings):
        torch.set_num_threads(settings.threads)
        coordinator, shards = names.lookup()
        goal_images = ray.get(ray.get(coordinator.goals.remote())[0])  # [N, C, H, W] uint8, read-only, shared
        device = reserved_device(settings.gpus, f"rollout actor {index}")
        self.worker = builder.make_rollout_worker(
            builder.make_agent(device=device), goal_images, torch.from_numpy(np.array(x1)), device,
            settings.seed + 7919 * index + int.from_bytes(uuid.uuid4().bytes[:2], "big"))
        self.worker.weight_version = -1
        self.index, self.coordinator, self.shards, self.settings = index, coordinator, shards, settings
        self.incarnation = uuid.uuid4().hex
        self.counters, self.lags, self.error = ActorCounters(), [], None
        self._pending: dict = {}  # ObjectRef -> (payload, shard index)
        self._next_shard = index
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run_safely, name=f"rollout-{index}", daemon=True)
        self._thread.start()

    def _run_safely(self) -> None:
        try:
            self._run()
        except Exception:  # reported through stats() so the driver can fail loudly
            self.error = traceback.format_exc(limit=8)

    def _run(self) -> None:
        while not self._stop.is_set() and not self._refresh_weights():
            self._stop.wait(0.05)  # nothing published yet
        while not self._stop.is_set():
            batch = self.worker.collect()
            with self._lock:
                self.counters.env_steps += len(batch) * self.worker.mdp.horizon
                self.counters.trajectories += len(batch)
            version, _, stopped = ray.get(self.coordinator.latest.remote())
            if stopped:
                break
            batch.weight_lag = max(0, version - batch.weight_version)
            with self._lock:
                self.lags.append(batch.weight_lag)
            self._send(batch.to_message())
            self._refresh_weights()  # polled again: a send may have waited for the learner, which published since

    def _refresh_weights(self) -> bool:
        """Load the posted weights if their version differs from ours; True once any are loaded."""
        version, weights, _ = ray.get(self.coordinator.latest.remote())
        if weights and version != self.worker.weight_version:
            self.worker.load_weights(ray.get(weights[0]))
        return self.worker.weight_version >= 0

    def _send(self, payload: bytes) -> None:
        while len(self._pending) >= self.settings.max_in_flight:
            self._settle()
        self._submit(payload)

    def _submit(self, payload: bytes) -> None:
        shard = self._next_shard % len(self.shards)
        self._next_shard += 1
        ref = self.shards[shard].insert.remote(payload, self.settings.insert_timeout)
        self._pending[ref] = payload

    def _settle(self) -> None:
        """Wait for one send to be answered; resend it elsewhere if its shard was full."""
        ready, _ = ray.wait(list(self._pending), num_returns=1)
        payload = self._pending.pop(ready[0])
        try:
            accepted = ray.get(ready[0])
        except PEER_FAILURES:  # the shard died; Ray restarts it, this batch is lost
            with self._lock:
                self.counters.dropped_batches += 1
            return
        if not accepted and not self._stop.is_set():
            self._submit(payload)

    def stats(self) -> dict:
        """Counters since this incarnation started, and the lags recorded since the last call."""
        with self._lock:
            lags, self.lags = self.lags, []
            counters = vars(self.counters).copy()
        return {"index": self.index, "incarnation": self.incarnation, "node": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                "weight_version": self.worker.weight_version, "lags": lags, "error": self.error, **counters}

    def stop(self) -> None:
        """End the loop after its current rollout."""
        self._stop.set()
        self._thread.join(timeout=30)
