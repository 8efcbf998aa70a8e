"""The paper's three replay memories behind one insert and one sample call: one shard's contents.

Inserting a TrajectoryBatch fills all three (section 3.2, Algorithm 1 lines 8 and 10):
  R_GC-select: transitions (x_h, h, a_h, x_{h+1}, loss_h, goal) for the Q-network,
  R_S-select:  selections (x_h, h, a_h) for the S-agent's imitation,
  R_S-prop:    sequences (a_1..a_H, goal) for the unfolded proposal network.
Goals are dataset indices. A sample call draws a batch from each memory that is due, gated by the
samples-per-insert limiter counted on GC transitions. Plain Python: the single-process trainer
uses it directly and a Ray replay shard wraps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from buffers.memory import Column, ReplayMemory
from buffers.rate_limiter import SampleToInsertRatio
from common.config import ReplayConfig
from common.errors import CheckpointError
from common.state import numpy_rng_from_text, numpy_rng_to_text
from common.messages import TrajectoryBatch, TrajectorySpec, pack_arrays, unpack_arrays

MEMORY_NAMES = ("gc_transitions", "selections", "proposal_sequences")


@dataclass
class ReplaySample:
    """One learner step's batches; a memory not due this step has None."""

    gc_transitions: dict[str, np.ndarray] | None  # state, step, selection, next_state, loss, goal_index
    selections: dict[str, np.ndarray] | None  # state, step, selection
    proposal_sequences: dict[str, np.ndarray] | None  # selections [B, H], goal_index

    def to_message(self) -> bytes:
        """msgpack bytes for the trip from a shard to the learner."""
        arrays = {f"{m}/{k}": v for m in MEMORY_NAMES for k, v in (getattr(self, m) or {}).items()}
        return pack_arrays("replay_sample", arrays)

    @classmethod
    def from_message(cls, payload: bytes) -> ReplaySample:
        """The learner's side of to_message; MessageError on anything malformed."""
        arrays, _ = unpack_arrays(payload, "replay_sample")
        parts = {m: {} for m in MEMORY_NAMES}
        for key, value in arrays.items():
            memory, _, column = key.partition("/")
            parts.setdefault(memory, {})[column] = value
        return cls(**{m: parts[m] or None for m in MEMORY_NAMES})


@dataclass(frozen=True)
class SampleRequest:
    """Batch sizes for one learner step (0 where an update is not due)."""

    gc_transitions: int
    selections: int
    proposal_sequences: int


def error_buffer(replay: ReplayConfig, q_batch: int, insert_transitions: int) -> float:
    """The limiter's band: the configured fraction of its offset, never below the deadlock-free width.

    Learner refused and actor refused at once needs 2 * buffer < q_batch + insert * ratio; this
    keeps the band wider than that.
    """
    offset = replay.samples_per_insert * replay.min_size_to_sample
    needed = (q_batch + insert_transitions * replay.samples_per_insert) / 2 + 1
    return max(replay.samples_per_insert_tolerance * offset, needed)


class ReplayTables:
    """One shard: the three memories, their limiter and their random stream."""

    def __init__(self, replay: ReplayConfig, spec: TrajectorySpec, q_batch: int, insert_transitions: int,
                 num_shards: int = 1, seed: int = 0):
        self.spec = spec
        image, h = tuple(spec.image_shape), spec.horizon
        share = lambda n: max(1, math.ceil(n / num_shards))  # noqa: E731 - each shard holds 1/S
        self.gc_transitions = ReplayMemory("gc_transitions", {
            "state": Column(image, "float32"), "step": Column((), "int16"), "selection": Column((), "int16"),
            "next_state": Column(image, "float32"), "loss": Column((), "float32"),
            "goal_index": Column((), "int64")}, share(replay.gc_capacity))
        self.selections = ReplayMemory("selections", {
            "state": Column(image, "float32"), "step": Column((), "int16"),
            "selection": Column((), "int16")}, share(replay.selection_capacity))
        self.proposal_sequences = ReplayMemory("proposal_sequences", {
            "selections": Column((h,), "int16"), "goal_index": Column((), "int64")},
            share(replay.proposal_capacity))
        self.limiter = SampleToInsertRatio(replay.samples_per_insert, share(replay.min_size_to_sample),
                                           error_buffer(replay, q_batch, insert_transitions))
        self.rng = np.random.default_rng(seed)

    def memories(self) -> tuple[ReplayMemory, ReplayMemory, ReplayMemory]:
        """The three memories in the paper's order, for code that treats them alike."""
        return self.gc_transitions, self.selections, self.proposal_sequences

    def can_insert(self, batch_size: int) -> bool:
        """Whether B more episodes (B * H transitions) keep the learner within the ratio."""
        return self.limiter.can_insert(batch_size * self.spec.horizon)

    def insert(self, batch: TrajectoryBatch) -> None:
        """Check the batch, then spread it over the three memories (Algorithm 1, lines 8 and 10)."""
        batch.check(self.spec)
        b, h = len(batch), self.spec.horizon
        image = tuple(self.spec.image_shape)
        states = batch.states[:, :-1].reshape((b * h,) + image)  # x_h for h = 1..H, episode-major
        steps = np.tile(np.arange(h, dtype=np.int16), b)
        selections = batch.selections.reshape(b * h)
        losses = np.zeros((b, h), dtype=np.float32)
        losses[:, -1] = batch.final_loss  # the loss is zero except at h = H
        self.gc_transitions.insert({
            "state": states, "step": steps, "selection": selections,
            "next_state": batch.states[:, 1:].reshape((b * h,) + image), "loss": losses.reshape(b * h),
            "goal_index": np.repeat(batch.goal_indices, h)})
        self.selections.insert({"state": states, "step": steps, "selection": selections})
        self.proposal_sequences.insert({"selections": batch.selections, "goal_index": batch.goal_indices})
        self.limiter.record_insert(b * h)

    def can_sample(self, request: SampleRequest) -> bool:
        """Whether the ratio allows this step's draw (counted on GC transitions)."""
        return self.limiter.can_sample(max(request.gc_transitions, 1))

    def sample(self, request: SampleRequest) -> ReplaySample:
        """Uniform batches from each memory the request asks of; the caller checked can_sample."""
        draw = lambda memory, n: memory.sample(n, self.rng) if n else None  # noqa: E731
        self.limiter.record_sample(max(request.gc_transitions, 1))
        return ReplaySample(draw(self.gc_transitions, request.gc_transitions),
                            draw(self.selections, request.selections),
                            draw(self.proposal_sequences, request.proposal_sequences))

    def sizes(self) -> dict[str, int]:
        """Items held per memory, for the replay-size gauge."""
        return {m.name: m.size for m in self.memories()}

    def to_message(self) -> bytes:
        """Everything needed to continue: contents oldest first, counters, limiter and random state."""
        arrays = {f"{m.name}/{k}": v for m in self.memories() for k, v in m.state_arrays().items()}
        meta = {"inserted": {m.name: m.inserted_total for m in self.memories()},
                "limiter": [self.limiter.inserts, self.limiter.samples],
                "rng": numpy_rng_to_text(self.rng), "spec": _spec_list(self.spec)}
        return pack_arrays("replay_shard", arrays, meta)

    def restore(self, payload: bytes) -> None:
        """Inverse of to_message; refuses a payload made for other images, H, A or goals."""
        arrays, meta = unpack_arrays(payload, "replay_shard")
        if meta.get("spec") != _spec_list(self.spec):
            raise CheckpointError(f"replay shard was saved for {meta.get('spec')}, this run needs "
                                  f"{_spec_list(self.spec)} (image shape, H, A, number of goals)")
        try:
            columns = {m.name: {k.partition("/")[2]: v for k, v in arrays.items() if k.startswith(m.name + "/")}
                       for m in self.memories()}
            inserted = {m.name: int(meta["inserted"][m.name]) for m in self.memories()}
            inserts, samples = (int(v) for v in meta["limiter"])
            rng_state = numpy_rng_from_text(meta["rng"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"replay shard state is incomplete: {exc!r}") from exc
        for memory in self.memories():  # check all before changing any
            memory.check_state(columns[memory.name])
        for memory in self.memories():
            memory.restore(columns[memory.name], inserted[memory.name])
        self.limiter.inserts, self.limiter.samples = inserts, samples
        self.rng.bit_generator.state = rng_state


def _spec_list(spec: TrajectorySpec) -> list:
    return [list(spec.image_shape), spec.horizon, spec.num_proposals, spec.num_goals]
