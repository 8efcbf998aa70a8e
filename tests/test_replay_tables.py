"""The replay shard's contents: episodes stored once, the paper's three memories as views, chunked checkpoints."""

import numpy as np
import pytest

from buffers.replay_files import read_shard, write_shard
from buffers.tables import MEMORY_NAMES, ReplayTables, SampleRequest
from common.method.config import ReplayConfig
from common.errors import CheckpointError
from common.storage.messages import TrajectoryBatch, TrajectorySpec, pack_arrays, unpack_arrays

SPEC = TrajectorySpec(image_shape=(1, 4, 4), horizon=3, num_proposals=4, num_goals=10)
REPLAY = ReplayConfig(gc_capacity=12, selection_capacity=12, proposal_capacity=4, min_size_to_sample=3,
                      samples_per_insert=2.0)


def _batch(first_goal=7, offset=0.0):
    """Two episodes; states[b, t] is filled with 10 * b + t + offset."""
    values = 10.0 * np.arange(2)[:, None] + np.arange(4)[None, :] + offset
    states = np.broadcast_to(values[:, :, None, None, None], (2, 4, 1, 4, 4)).astype(np.float32)
    return TrajectoryBatch(states=states, selections=np.array([[0, 1, 2], [3, 2, 1]], dtype=np.int16),
                           goal_indices=np.array([first_goal, 2], dtype=np.int64),
                           final_loss=np.array([0.5, 1.25], dtype=np.float32), weight_version=3)


def _tables(seed=0, spec=SPEC, replay=REPLAY):
    return ReplayTables(replay, spec, q_batch=4, insert_transitions=6, seed=seed)


def _held(tables, memory="gc"):
    """Every step a view holds, oldest first, as the learner would receive it."""
    return (tables.gc_transitions if memory == "gc" else tables.selections).state_arrays()


def _snapshot(tables):
    contents = {m.name: m.state_arrays() for m in tables.memories()}
    counters = ({m.name: (m.size, m.inserted_total) for m in tables.memories()},
                (tables.limiter.inserts, tables.limiter.samples))
    return contents, counters, tables.rng.bit_generator.state


def _assert_same(a, b):
    assert a[1] == b[1] and a[2] == b[2]
    for name in a[0]:
        assert a[0][name].keys() == b[0][name].keys()
        for key in a[0][name]:
            np.testing.assert_array_equal(a[0][name][key], b[0][name][key])


def _assert_same_sample(a, b):
    for name in MEMORY_NAMES:
        for key, value in getattr(a, name).items():
            np.testing.assert_array_equal(value, getattr(b, name)[key])


def test_tables_insert_gc_transitions():
    tables = _tables()
    tables.insert(_batch())
    gc = _held(tables)
    assert gc["state"][:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert gc["next_state"][:, 0, 0, 0].tolist() == [1, 2, 3, 11, 12, 13]
    assert gc["step"].tolist() == [0, 1, 2, 0, 1, 2]
    assert gc["selection"].tolist() == [0, 1, 2, 3, 2, 1]
    assert gc["loss"].tolist() == [0.0, 0.0, 0.5, 0.0, 0.0, 1.25]
    assert gc["goal_index"].tolist() == [7, 7, 7, 2, 2, 2]
    assert gc["state"].shape == (6, 1, 4, 4) and gc["state"].dtype == np.float32


def test_tables_insert_selections_and_sequences():
    tables = _tables()
    tables.insert(_batch())
    sel = _held(tables, "selections")
    assert sel["state"][:, 0, 3, 3].tolist() == [0, 1, 2, 10, 11, 12]
    assert sel["step"].tolist() == [0, 1, 2, 0, 1, 2]
    assert sel["selection"].tolist() == [0, 1, 2, 3, 2, 1]
    seq = tables.proposal_sequences.state_arrays()
    assert seq["selections"].tolist() == [[0, 1, 2], [3, 2, 1]]
    assert seq["goal_index"].tolist() == [7, 2]
    assert tables.limiter.inserts == 6
    assert tables.sizes() == {"gc_transitions": 6, "selections": 6, "proposal_sequences": 2, "episodes": 2}


def test_each_state_is_stored_once():
    tables = _tables()
    states = tables.episodes.array("states")
    assert states.shape == (4, 4, 1, 4, 4)  # 12 transitions of H = 3: 4 episodes of H + 1 states
    assert tables.nbytes() == states.nbytes + sum(a.nbytes for k, a in tables.episodes._data.items() if k != "states") \
        + tables.proposal_sequences.nbytes()


@pytest.mark.parametrize("gc_capacity, selection_capacity", [(12, 12), (7, 12), (12, 5), (4, 8)])
def test_views_hold_exactly_the_newest_steps_of_a_per_transition_ring(gc_capacity, selection_capacity):
    """What a ring of C separate transitions would hold after the same inserts: the newest C, episode-major."""
    replay = ReplayConfig(gc_capacity=gc_capacity, selection_capacity=selection_capacity, proposal_capacity=4,
                          min_size_to_sample=3, samples_per_insert=2.0)
    tables = _tables(replay=replay)
    every = []  # (state value, step) of every transition ever inserted, in insertion order
    for offset in (0.0, 100.0, 200.0, 300.0):
        tables.insert(_batch(offset=offset))
        every += [(10.0 * b + h + offset, h) for b in range(2) for h in range(3)]
        for memory, capacity in (("gc", gc_capacity), ("selections", selection_capacity)):
            held = _held(tables, memory)
            got = list(zip(held["state"][:, 0, 0, 0].tolist(), held["step"].tolist()))
            assert got == every[-capacity:]


def test_tables_insert_from_message():
    tables = _tables()
    tables.insert(TrajectoryBatch.from_message(_batch().to_message(), SPEC))
    assert _held(tables)["next_state"][:, 0, 0, 0].tolist() == [1, 2, 3, 11, 12, 13]


def test_tables_gate_sampling_on_min_size():
    tables = ReplayTables(REPLAY, SPEC, q_batch=2, insert_transitions=3, seed=0)
    assert not tables.can_sample(SampleRequest(2, 2, 2))
    tables.insert(_batch())
    assert tables.can_sample(SampleRequest(2, 2, 2))


def test_tables_sample_rows_are_consistent():
    tables = _tables()
    tables.insert(_batch())
    sample = tables.sample(SampleRequest(20, 5, 0))
    gc = sample.gc_transitions
    np.testing.assert_array_equal(gc["next_state"][:, 0, 0, 0], gc["state"][:, 0, 0, 0] + 1)
    np.testing.assert_array_equal(gc["step"], gc["state"][:, 0, 0, 0] % 10)
    assert sample.proposal_sequences is None and sample.selections["state"].shape == (5, 1, 4, 4)
    assert tables.limiter.samples == 20


def test_float16_states_keep_values_to_half_precision():
    tables = _tables(replay=ReplayConfig(gc_capacity=12, selection_capacity=12, proposal_capacity=4,
                                         min_size_to_sample=3, state_dtype="float16"))
    batch = _batch()
    batch.states[:] = batch.states + 0.1234567
    tables.insert(batch)
    assert tables.episodes.array("states").dtype == np.float16
    held = _held(tables)
    assert held["state"].dtype == np.float32
    np.testing.assert_allclose(held["state"][:, 0, 0, 0], [0.1234567, 1.1234567, 2.1234567, 10.1234567,
                                                           11.1234567, 12.1234567], rtol=1e-3)
    assert tables.nbytes() < _tables().nbytes()


def _used_tables(seed=5):
    tables = _tables(seed=seed)
    tables.insert(_batch())
    tables.sample(SampleRequest(4, 4, 2))
    return tables


def _messages(tables, chunk_bytes=200):
    """The header and chunks a checkpoint would hold (tiny chunks: one episode each here)."""
    chunks = {f"c{k}": payload for k, payload in enumerate(tables.episode_chunks(chunk_bytes))}
    return tables.header_message(sorted(chunks, key=lambda n: int(n[1:]))), chunks


def _round_trip(source, target, chunk_bytes=200):
    header, chunks = _messages(source, chunk_bytes)
    target.restore(header, chunks.__getitem__)


def test_tables_round_trip_contents_and_counters():
    tables = _used_tables()
    restored = _tables(seed=123)
    _round_trip(tables, restored)
    _assert_same(_snapshot(tables), _snapshot(restored))
    assert len(_messages(tables)[1]) == 2  # one chunk per episode at this bound


def test_tables_round_trip_next_sample_matches():
    tables = _used_tables()
    restored = _tables(seed=123)
    _round_trip(tables, restored, chunk_bytes=1 << 20)
    _assert_same_sample(tables.sample(SampleRequest(6, 6, 3)), restored.sample(SampleRequest(6, 6, 3)))


def test_tables_round_trip_next_sample_matches_after_wraparound():
    tables = _tables(seed=5)
    for offset in (0.0, 100.0, 200.0):  # 6 episodes into a ring of 4: it wraps
        tables.insert(_batch(offset=offset))
    restored = _tables(seed=123)
    _round_trip(tables, restored)
    _assert_same_sample(tables.sample(SampleRequest(6, 6, 3)), restored.sample(SampleRequest(6, 6, 3)))
    assert tables.fingerprint() == restored.fingerprint()


def test_tables_round_trip_through_files_into_float16(tmp_path):
    tables = _used_tables()
    files = write_shard(tables, tmp_path, 3, chunk_bytes=200)
    assert sorted(files) == ["replay-3-c000000.msgpack", "replay-3-c000001.msgpack", "replay-3.msgpack"]
    half = _tables(replay=ReplayConfig(gc_capacity=12, selection_capacity=12, proposal_capacity=4,
                                       min_size_to_sample=3, samples_per_insert=2.0, state_dtype="float16"))
    read_shard(half, tmp_path, 3, files)
    np.testing.assert_array_equal(_held(half)["state"], _held(tables)["state"])  # small integers: exact in half


def test_tables_restore_foreign_spec_refused_intact():
    other_spec = TrajectorySpec(image_shape=(1, 4, 4), horizon=3, num_proposals=4, num_goals=11)
    foreign = _tables(spec=other_spec)
    foreign.insert(_batch(offset=50.0))
    tables = _used_tables()
    before = _snapshot(tables)
    with pytest.raises(CheckpointError, match="saved for"):
        _round_trip(foreign, tables)
    _assert_same(before, _snapshot(tables))


def _edited_header(edit):
    header, chunks = _messages(_used_tables(seed=9))
    arrays, meta = unpack_arrays(header, "replay_shard")
    arrays, meta = dict(arrays), dict(meta)
    edit(arrays, meta)
    return pack_arrays("replay_shard", arrays, meta), chunks


@pytest.mark.parametrize("edit", [
    lambda arrays, meta: arrays.update({"proposal_sequences/selections": np.zeros((2, 4), np.int16)}),  # H + 1
    lambda arrays, meta: meta.pop("limiter"),
    lambda arrays, meta: meta.update(layout="per-transition"),
], ids=["bad-column", "missing-limiter", "old-layout"])
def test_tables_restore_bad_header_refused_intact(edit):
    header, chunks = _edited_header(edit)
    tables = _tables()
    tables.insert(_batch(offset=30.0))
    before = _snapshot(tables)
    with pytest.raises(CheckpointError):
        tables.restore(header, chunks.__getitem__)
    _assert_same(before, _snapshot(tables))


def test_a_bad_chunk_empties_the_shard_instead_of_half_restoring_it():
    header, chunks = _messages(_used_tables())
    arrays, meta = unpack_arrays(chunks["c1"], "replay_episodes")
    chunks["c1"] = pack_arrays("replay_episodes", {**arrays, "selections": arrays["selections"].astype(np.int32)}, meta)
    tables = _tables()
    tables.insert(_batch(offset=30.0))
    with pytest.raises(CheckpointError, match="damaged"):
        tables.restore(header, chunks.__getitem__)
    assert tables.sizes() == {"gc_transitions": 0, "selections": 0, "proposal_sequences": 0, "episodes": 0}


def test_a_corrupt_checkpoint_file_is_refused_before_anything_changes(tmp_path):
    files = write_shard(_used_tables(), tmp_path, 0, chunk_bytes=200)
    chunk = tmp_path / "replay-0-c000001.msgpack"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    tables = _tables()
    tables.insert(_batch(offset=30.0))
    before = _snapshot(tables)
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_shard(tables, tmp_path, 0, files)
    _assert_same(before, _snapshot(tables))


def test_a_draw_is_the_held_steps_at_uniform_ages_as_a_per_transition_ring_draws():
    """Same random stream, same batch: sample() takes the steps at rng.integers(0, size) ages, memory by memory."""
    tables = _tables(seed=11)
    for offset in (0.0, 100.0, 200.0):
        tables.insert(_batch(offset=offset))
    stream = np.random.default_rng(11)
    gc_ages, sel_ages = stream.integers(0, 12, size=9), stream.integers(0, 12, size=5)
    sample = tables.sample(SampleRequest(9, 5, 0))
    for key, value in _held(tables).items():
        np.testing.assert_array_equal(sample.gc_transitions[key], value[gc_ages])
    for key, value in _held(tables, "selections").items():
        np.testing.assert_array_equal(sample.selections[key], value[sel_ages])


def test_posteriors_travel_to_the_selection_samples_and_default_to_one_hot():
    tables = _tables()
    soft = np.full((2, 3, 4), 0.25, np.float16)
    tables.insert(_batch())  # no posteriors: the choices, one-hot
    tables.insert(TrajectoryBatch(**{**vars(_batch(first_goal=3)), "posteriors": soft}))
    held = tables.selections.state_arrays()
    assert held["posterior"].shape == (12, 4)
    assert np.array_equal(held["posterior"][:6], np.eye(4, dtype=np.float32)[held["selection"][:6]])
    assert np.allclose(held["posterior"][6:], 0.25)


def test_chunks_saved_before_posteriors_existed_restore_with_one_hot_choices():
    source = _used_tables()
    header, chunks = _messages(source)
    for name, payload in list(chunks.items()):
        arrays, meta = unpack_arrays(payload, "replay_episodes")
        chunks[name] = pack_arrays("replay_episodes", {k: v for k, v in arrays.items() if k != "posteriors"}, meta)
    restored = _tables(seed=5)
    restored.restore(header, chunks.__getitem__)
    held = restored.selections.state_arrays()
    assert restored.sizes() == source.sizes()
    assert np.array_equal(held["posterior"], np.eye(4, dtype=np.float32)[held["selection"]])
