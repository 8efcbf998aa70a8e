"""One replay shard's contents: the episode ring, the paper's three memories drawn from it, and a limiter.

Plain numpy, no Ray: the single-process trainer uses it directly and a Ray replay shard wraps it.
Each episode's states are stored once (buffers/episodes.py); GC transitions and S-select samples are
views of the newest episodes, S-prop sequences a small ring of their own. A checkpoint is a header
message plus bounded chunks of episodes, so neither writer nor reader ever holds a second full copy.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from buffers.episodes import (StepView, episode_ring, episodes_needed, gc_transitions, one_hot_posteriors,
                              selection_samples)
from buffers.memory import Column, ReplayMemory
from buffers.rate_limiter import SampleToInsertRatio
from common.method.config import ReplayConfig
from common.errors import CheckpointError, MessageError
from common.storage.run_state import numpy_rng_from_text, numpy_rng_to_text
from common.storage.messages import TrajectoryBatch, TrajectorySpec, pack_arrays, unpack_arrays

MEMORY_NAMES = ("gc_transitions", "selections", "proposal_sequences")
LAYOUT = "episodes-once"  # replay-shard checkpoint layout: episodes stored once, in chunks


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
    """One shard: the episode ring, the three memories over it, their limiter and their random stream."""

    def __init__(self, replay: ReplayConfig, spec: TrajectorySpec, q_batch: int, insert_transitions: int,
                 num_shards: int = 1, seed: int = 0):
        self.spec = spec
        h = spec.horizon
        share = lambda n: max(1, math.ceil(n / num_shards))  # noqa: E731 - each shard holds 1/S
        gc, selections = share(replay.gc_capacity), share(replay.selection_capacity)
        self.episodes = episode_ring(spec.image_shape, h, spec.num_proposals, episodes_needed((gc, selections), h),
                                     replay.state_dtype)
        self.gc_transitions = StepView("gc_transitions", self.episodes, h, gc, gc_transitions)
        self.selections = StepView("selections", self.episodes, h, selections, selection_samples)
        self.proposal_sequences = ReplayMemory("proposal_sequences", {
            "selections": Column((h,), "int16"), "goal_index": Column((), "int64")},
            share(replay.proposal_capacity))
        self.limiter = SampleToInsertRatio(replay.samples_per_insert, share(replay.min_size_to_sample),
                                           error_buffer(replay, q_batch, insert_transitions))
        self.rng = np.random.default_rng(seed)

    def memories(self) -> tuple[ReplayMemory, ReplayMemory]:
        """The rings that hold data (episodes, S-prop sequences), for code that saves or compares contents."""
        return self.episodes, self.proposal_sequences

    def can_insert(self, batch_size: int) -> bool:
        """Whether B more episodes (B * H transitions) keep the learner within the ratio."""
        return self.limiter.can_insert(batch_size * self.spec.horizon)

    def insert(self, batch: TrajectoryBatch) -> None:
        """Check the batch, then store each episode once (Algorithm 1, lines 8 and 10)."""
        batch.check(self.spec)
        self.episodes.insert({"states": batch.states, "selections": batch.selections,
                              "goal_index": batch.goal_indices, "final_loss": batch.final_loss,
                              "posteriors": batch.posteriors if batch.posteriors is not None
                              else one_hot_posteriors(batch.selections, self.spec.num_proposals)})
        self.proposal_sequences.insert({"selections": batch.selections, "goal_index": batch.goal_indices})
        self.limiter.record_insert(len(batch) * self.spec.horizon)

    def can_sample(self, request: SampleRequest) -> bool:
        """Whether the ratio allows this step's draw (counted on GC transitions)."""
        return self.limiter.can_sample(max(request.gc_transitions, 1))

    def sample(self, request: SampleRequest) -> ReplaySample:
        """Uniform batches from each memory the request asks of; the caller checked can_sample."""
        self.limiter.record_sample(max(request.gc_transitions, 1))
        draw = lambda memory, n: memory.sample(n, self.rng) if n else None  # noqa: E731
        return ReplaySample(draw(self.gc_transitions, request.gc_transitions),
                            draw(self.selections, request.selections),
                            draw(self.proposal_sequences, request.proposal_sequences))

    def sizes(self) -> dict[str, int]:
        """Items held per memory (and episodes), for the replay-size gauge."""
        return {"gc_transitions": self.gc_transitions.size, "selections": self.selections.size,
                "proposal_sequences": self.proposal_sequences.size, "episodes": self.episodes.size}

    def nbytes(self) -> int:
        """Bytes of this shard's preallocated replay: what it costs its process once full."""
        return sum(m.nbytes() for m in self.memories())

    def fingerprint(self) -> str:
        """SHA-256 of the held contents and counters: equal contents give equal fingerprints."""
        sha = hashlib.sha256(repr((self.sizes(), self.limiter.inserts, self.limiter.samples)).encode())
        for memory in self.memories():
            for key, value in sorted(memory.state_arrays().items()):
                sha.update(key.encode() + np.ascontiguousarray(value).tobytes())
        return sha.hexdigest()

    def header_message(self, chunks: list[str]) -> bytes:
        """Everything but the episodes: S-prop sequences, counters, limiter, random state, chunk names."""
        arrays = {f"proposal_sequences/{k}": v for k, v in self.proposal_sequences.state_arrays().items()}
        meta = {"layout": LAYOUT, "episodes": self.episodes.size, "chunks": chunks,
                "inserted": {m.name: m.inserted_total for m in self.memories()},
                "limiter": [self.limiter.inserts, self.limiter.samples],
                "rng": numpy_rng_to_text(self.rng), "spec": _spec_list(self.spec)}
        return pack_arrays("replay_shard", arrays, meta)

    def episode_chunks(self, chunk_bytes: int):
        """The held episodes oldest first, as msgpack chunks of at most ~chunk_bytes each."""
        per_episode = max(1, self.episodes.nbytes() // max(1, self.episodes.capacity))
        step = max(1, chunk_bytes // per_episode)
        for first in range(0, self.episodes.size, step):
            ages = np.arange(first, min(first + step, self.episodes.size))
            slots = self.episodes.slots(ages)
            arrays = {k: self.episodes.array(k)[slots] for k in self.episodes.columns}
            yield pack_arrays("replay_episodes", arrays, {"first": first})

    def restore(self, header: bytes, read_chunk) -> None:
        """Refill from header_message() and its chunks (read_chunk(name) -> bytes), oldest episodes first.

        The header is checked before anything changes; a chunk that turns out bad empties the shard and
        raises CheckpointError, so a shard never serves a half-restored replay.
        """
        arrays, meta = unpack_arrays(header, "replay_shard")
        parsed = self._check_header(arrays, meta)
        try:
            self._refill(parsed, read_chunk)
        except (CheckpointError, MessageError) as exc:
            for memory in self.memories():
                memory.clear()
            raise CheckpointError(f"replay shard state is damaged: {exc}") from exc

    def _check_header(self, arrays: dict, meta: dict) -> dict:
        if meta.get("spec") != _spec_list(self.spec):
            raise CheckpointError(f"replay shard was saved for {meta.get('spec')}, this run needs "
                                  f"{_spec_list(self.spec)} (image shape, H, A, number of goals)")
        if meta.get("layout") != LAYOUT:
            raise CheckpointError(f"replay shard layout is {meta.get('layout')!r}, this code reads {LAYOUT!r}")
        try:
            proposals = {k.partition("/")[2]: v for k, v in arrays.items() if k.startswith("proposal_sequences/")}
            parsed = {"proposals": proposals, "chunks": [str(c) for c in meta["chunks"]],
                      "inserted": {m.name: int(meta["inserted"][m.name]) for m in self.memories()},
                      "limiter": [int(v) for v in meta["limiter"]], "rng": numpy_rng_from_text(meta["rng"])}
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"replay shard state is incomplete: {exc!r}") from exc
        self.proposal_sequences.check_state(proposals)
        return parsed

    def _refill(self, parsed: dict, read_chunk) -> None:
        self.episodes.clear()
        dtype = self.episodes.columns["states"].dtype
        for name in parsed["chunks"]:
            arrays, _ = unpack_arrays(read_chunk(name), "replay_episodes")
            arrays = dict(arrays, states=arrays["states"].astype(dtype)) if "states" in arrays else arrays
            if "posteriors" not in arrays and "selections" in arrays:  # saved before posteriors were kept
                arrays["posteriors"] = one_hot_posteriors(arrays["selections"], self.spec.num_proposals)
            self.episodes.check_state(arrays)
            self.episodes.insert(arrays)
        self.episodes.inserted_total = parsed["inserted"]["episodes"]
        self.proposal_sequences.restore(parsed["proposals"], parsed["inserted"]["proposal_sequences"])
        self.limiter.inserts, self.limiter.samples = parsed["limiter"]
        self.rng.bit_generator.state = parsed["rng"]


def _spec_list(spec: TrajectorySpec) -> list:
    return [list(spec.image_shape), spec.horizon, spec.num_proposals, spec.num_goals]
