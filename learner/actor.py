"""The learner as a Ray actor: Learner plus a shard sampler and a weight publisher.

The driver calls `train(seconds)` in a loop, so checkpoints, metrics and stop signals happen between
calls while sample requests stay in flight across them. Each weights version is put in the object
store once and its reference posted on the coordinator; the previous reference is dropped.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import astuple, dataclass
from typing import Callable

import numpy as np
import ray
import torch

from actors.names import PEER_FAILURES
from buffers.tables import ReplaySample, SampleRequest
from common.device import reserved_device
from common.storage.checkpoint import decode_learner_state, encode_learner_state
from common.storage.messages import pack_weights
from learner.builder import Builder
from learner.learning import UPDATE_KINDS


@dataclass(frozen=True)
class LearnerSettings:
    """Where the learner runs and how often it republishes."""

    gpus: float = 0.0  # what Ray reserved for it: the GPU is used when this process sees CUDA
    threads: int = 1
    publish_every: int = 20  # learner steps between weight versions
    requests_per_shard: int = 2  # sample requests kept in flight to each shard
    seed: int = 0


class ShardSampler:
    """Keeps sample requests in flight to every shard and returns whichever batch arrives first."""

    def __init__(self, shards: list, request_for: Callable[[int], SampleRequest], per_shard: int,
                 shard_timeout: float = 0.5):
        self.shards, self.request_for, self.per_shard = shards, request_for, per_shard
        self.shard_timeout = shard_timeout
        self.pending: dict = {}  # ObjectRef -> shard index
        self.issued = 0  # requests issued so far; request k carries step k's due updates
        self.failures = 0

    def _top_up(self) -> None:
        in_flight = Counter(self.pending.values())
        for index, shard in enumerate(self.shards):
            for _ in range(self.per_shard - in_flight[index]):
                request = astuple(self.request_for(self.issued))
                self.issued += 1
                self.pending[shard.sample.remote(request, self.shard_timeout)] = index

    def next(self, timeout: float) -> ReplaySample | None:
        """The first batch any shard delivers within `timeout`, else None."""
        self._top_up()
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if not ready:
            return None
        self.pending.pop(ready[0])
        try:
            payload = ray.get(ready[0])
        except PEER_FAILURES:  # a shard is restarting: ask again a little later
            self.failures += 1
            time.sleep(0.05)
            return None
        return None if payload is None else ReplaySample.from_message(payload)


@ray.remote(max_restarts=0)
class LearnerActor:
    """Runs Algorithm 2 against the shards; the GPU when it was given one."""

    def __init__(self, builder: Builder, goal_images: np.ndarray, x1: np.ndarray, shards: list, coordinator,
                 settings: LearnerSettings, state: bytes | None):
        torch.set_num_threads(settings.threads)
        self.device = reserved_device(settings.gpus, "learner")
        self.learner = builder.make_learner(builder.make_agent(settings.seed), torch.from_numpy(np.array(goal_images)),
                                            torch.from_numpy(np.array(x1)), self.device)
        self.settings, self.coordinator, self.version = settings, coordinator, 0
        if state is not None:
            self._load(state)
        self.sampler = ShardSampler(shards, self.learner.request_for, settings.requests_per_shard)
        self._weights_ref = None
        self.publish()

    def _load(self, data: bytes) -> None:
        state = decode_learner_state(data, "learner state", map_location="cpu")
        self.learner.load_state_dict(state["learner"])
        self.version = int(state.get("weight_version", 0)) + 1
        torch.set_rng_state(state["rng"]["torch"])

    def publish(self) -> int:
        """Put the current weights in the object store once and post the references: the acting weights first, then,
        when averaging is on, the averaged S-agent's, which the evaluation actor reads (it reads the last)."""
        steps = self.learner.counts.steps
        refs = [ray.put(pack_weights(self.learner.weights(), self.version, steps))]
        if self.learner.averaged is not None:
            refs.append(ray.put(pack_weights(self.learner.weights(averaged=True), self.version, steps)))
        ray.get(self.coordinator.publish.remote(self.version, refs))
        self._weights_ref = refs  # the previous version's references are dropped here
        self.version += 1
        return self.version - 1

    def train(self, seconds: float, max_steps: int) -> dict:
        """Learner steps for up to `seconds` (or until `max_steps`); returns counters and mean losses."""
        deadline = time.monotonic() + seconds
        sums, counts = Counter(), Counter()
        while self.learner.counts.steps < max_steps and time.monotonic() < deadline:
            sample = self.sampler.next(timeout=max(0.01, deadline - time.monotonic()))
            if sample is None:
                continue
            for kind, value in self.learner.step(sample).items():
                sums[kind] += value
                counts[kind] += 1
            if self.learner.counts.steps % self.settings.publish_every == 0:
                self.publish()
        return self.stats({k: sums[k] / counts[k] for k in counts})

    def stats(self, losses: dict | None = None) -> dict:
        """Counters, the last slice's mean losses, and where the learner runs (node, device)."""
        c = self.learner.counts
        return {"steps": c.steps, "updates": {k: getattr(c, k) for k in UPDATE_KINDS}, "losses": losses or {},
                "weight_version": self.version - 1, "sample_failures": self.sampler.failures,
                "node": ray.get_runtime_context().get_node_id(), "device": str(self.device), "pid": os.getpid()}

    def state_bytes(self, extra: dict) -> bytes:
        """Everything to continue learning, as weights_only-loadable bytes (plus the driver's counters)."""
        return encode_learner_state({"learner": self.learner.state_dict(), "x1": self.learner.x1.cpu(),
                                     "weight_version": self.version - 1, "rng": {"torch": torch.get_rng_state()},
                                     **extra})

    def weights(self) -> bytes:
        """The current weights message for evaluation without a checkpoint (the averaged S-agent when averaging is
        on)."""
        return pack_weights(self.learner.weights(averaged=True), self.version - 1, self.learner.counts.steps)
