"""The replay shard as a Ray actor: a thin async wrapper around ReplayTables.

Async so that a sample waiting for the rate limiter (or an insert waiting for the learner) yields
the event loop to the calls that can unblock it, like Reverb's blocking tables with timeouts. Every
payload is decoded and checked before the tables are touched; a bad one raises MessageError to its
sender and leaves the contents as they were.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import ray

from buffers.tables import ReplayTables, SampleRequest
from common.config import ReplayConfig
from common.errors import MessageError
from common.messages import TrajectoryBatch, TrajectorySpec

POLL_SECONDS = 0.005


@ray.remote(num_cpus=0.25, max_restarts=-1)
class ReplayShard:
    """One of S shards; each holds 1/S of every memory's capacity."""

    def __init__(self, replay: ReplayConfig, spec: TrajectorySpec, q_batch: int, insert_transitions: int,
                 num_shards: int, index: int, seed: int):
        self.index, self.spec = index, spec
        self.tables = ReplayTables(replay, spec, q_batch, insert_transitions, num_shards, seed + 1000 * index)
        self.incarnation = uuid.uuid4().hex
        self.refused_messages = 0

    async def _wait_for(self, ready, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True

    async def insert(self, payload: bytes, timeout: float = 1.0) -> bool:
        """Insert a msgpack trajectory batch; False if the learner stayed too far behind for `timeout`."""
        try:
            batch = TrajectoryBatch.from_message(payload, self.spec)
        except MessageError:
            self.refused_messages += 1
            raise
        if not await self._wait_for(lambda: self.tables.can_insert(len(batch)), timeout):
            return False
        self.tables.insert(batch)
        return True

    async def sample(self, request: tuple[int, int, int], timeout: float = 0.5) -> bytes | None:
        """A msgpack ReplaySample for one learner step, or None if the ratio forbade it for `timeout`."""
        wanted = SampleRequest(*request)
        if not await self._wait_for(lambda: self.tables.can_sample(wanted), timeout):
            return None
        return self.tables.sample(wanted).to_message()

    def stats(self) -> dict:
        """Sizes and counters for the metrics endpoint (inserts and samples counted in GC transitions)."""
        limiter = self.tables.limiter
        return {"index": self.index, "incarnation": self.incarnation, "sizes": self.tables.sizes(),
                "node": ray.get_runtime_context().get_node_id(),
                "inserts": limiter.inserts, "samples": limiter.samples, "refused_messages": self.refused_messages}

    def save(self) -> bytes:
        """The shard's whole state as msgpack bytes, for a checkpoint."""
        return self.tables.to_message()

    def restore(self, payload: bytes) -> dict:
        """Replace the contents with a checkpoint's; refuses a foreign payload and keeps the old contents."""
        self.tables.restore(payload)
        return self.tables.sizes()

