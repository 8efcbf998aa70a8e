"""The replay shard as a Ray actor: a thin async wrapper around ReplayTables.

Async so that a sample waiting for the rate limiter (or an insert waiting for the learner) yields
the event loop to the calls that can unblock it, like Reverb's blocking tables with timeouts. Waiters
sleep on an asyncio.Condition that every insert and sample notifies, so an idle shard costs nothing and
a waiting call resumes as soon as the limiter allows it. Every payload is decoded and checked before
the tables are touched; a bad one raises MessageError to its sender and leaves the contents as they
were. The shard writes and reads its own part of a checkpoint, and a restarted shard refills from the
newest checkpoint of its run.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings

import ray

from buffers.replay_files import read_shard, restore_newest, write_shard
from buffers.tables import SampleRequest
from common.errors import CheckpointError, MessageError
from common.storage.messages import TrajectoryBatch
from learner.builder import Builder

SHARD_CPUS = 0.25  # what a shard asks of Ray: it mostly waits on its event loop (deploy/placement.py counts it)


def restarted_by_ray() -> bool:
    """Whether Ray restarted this actor. Ray's property reads its own deprecated `actor_id` and would print a
    deprecation warning into every user's log; that warning, and only it, is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


@ray.remote(num_cpus=SHARD_CPUS, max_restarts=-1)
class ReplayShard:
    """One of S shards; each holds 1/S of every memory's capacity."""

    def __init__(self, builder: Builder, num_shards: int, index: int, seed: int, checkpoint_dir: str | None = None):
        self.index, self.spec, self.num_shards = index, builder.trajectory_spec(), num_shards
        self.tables = builder.make_replay_tables(seed, num_shards, index)
        self.incarnation = uuid.uuid4().hex
        self.refused_messages = 0
        self.refilled_from: str | None = None
        self.limiter_checks = 0  # times a waiting insert or sample looked at the limiter: once, then once per wake-up
        self._changed: asyncio.Condition | None = None  # made on first use, inside the actor's event loop
        if checkpoint_dir and restarted_by_ray():
            self._refill(checkpoint_dir)

    def _refill(self, checkpoint_dir: str) -> None:
        """After a crash: the newest checkpoint's part of this shard, or empty (with a line) if that fails."""
        try:
            path = restore_newest(self.tables, checkpoint_dir, self.index, self.num_shards)
        except CheckpointError as exc:
            print(f"replay shard {self.index} restarted empty: {exc}", flush=True)
            return
        self.refilled_from = str(path) if path else None
        sizes = self.tables.sizes()
        print(f"replay shard {self.index} restarted and refilled {sizes['episodes']} episodes from {path}"
              if path else f"replay shard {self.index} restarted empty: no checkpoint yet", flush=True)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _wait_for(self, ready, timeout: float) -> bool:
        """Hold the condition until ready() (True) or `timeout` seconds (False); woken by inserts and samples."""
        def check() -> bool:
            self.limiter_checks += 1
            return ready()

        try:
            await asyncio.wait_for(self._condition().wait_for(check), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _notify(self) -> None:
        """Wake every waiting insert and sample to re-check the limiter."""
        async with self._condition():
            self._condition().notify_all()

    async def insert(self, payload: bytes, timeout: float = 1.0) -> bool:
        """Insert a msgpack trajectory batch; False if the learner stayed too far behind for `timeout`."""
        try:
            batch = TrajectoryBatch.from_message(payload, self.spec)
        except MessageError:
            self.refused_messages += 1
            raise
        async with self._condition():
            if not await self._wait_for(lambda: self.tables.can_insert(len(batch)), timeout):
                return False
            self.tables.insert(batch)
            self._condition().notify_all()
        return True

    async def sample(self, request: tuple[int, int, int], timeout: float = 0.5) -> bytes | None:
        """A msgpack ReplaySample for one learner step, or None if the ratio forbade it for `timeout`."""
        wanted = SampleRequest(*request)
        async with self._condition():
            if not await self._wait_for(lambda: self.tables.can_sample(wanted), timeout):
                return None
            sample = self.tables.sample(wanted)
            self._condition().notify_all()
        return sample.to_message()

    def stats(self) -> dict:
        """Sizes and counters for the metrics endpoint (inserts and samples counted in GC transitions)."""
        limiter = self.tables.limiter
        return {"index": self.index, "incarnation": self.incarnation, "sizes": self.tables.sizes(),
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "inserts": limiter.inserts, "samples": limiter.samples, "refused_messages": self.refused_messages,
                "refilled_from": self.refilled_from, "limiter_checks": self.limiter_checks}

    def write_checkpoint(self, folder: str) -> dict:
        """Write this shard's files into a checkpoint's staging folder; their manifest entries."""
        return write_shard(self.tables, folder, self.index)

    async def read_checkpoint(self, folder: str, files: dict) -> dict:
        """Replace the contents with a checkpoint's (every digest checked first); the new sizes."""
        read_shard(self.tables, folder, self.index, files)
        await self._notify()  # the restored limiter may let waiting calls through
        return self.tables.sizes()

    def can_see(self, path: str) -> bool:
        """Whether `path` exists where this shard runs (checkpoints need a filesystem every node mounts)."""
        return os.path.exists(path)

    def fingerprint(self) -> str:
        """SHA-256 of the contents and counters, so tests can tell whether anything changed."""
        return self.tables.fingerprint()
