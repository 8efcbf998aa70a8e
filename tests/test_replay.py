import numpy as np
import pytest

from buffers.memory import Column, ReplayMemory
from buffers.rate_limiter import SampleToInsertRatio
from buffers.tables import MEMORY_NAMES, ReplayTables, SampleRequest
from common.config import ReplayConfig
from common.errors import CheckpointError
from common.messages import TrajectoryBatch, TrajectorySpec, pack_arrays, unpack_arrays

SPEC = TrajectorySpec(image_shape=(1, 4, 4), horizon=3, num_proposals=4, num_goals=10)
REPLAY = ReplayConfig(gc_capacity=12, selection_capacity=12, proposal_capacity=4, min_size_to_sample=3,
                      samples_per_insert=2.0)


def _memory(capacity=4):
    return ReplayMemory("m", {"v": Column((), "int64"), "x": Column((2,), "float32")}, capacity)


def _items(values):
    values = np.asarray(values, dtype=np.int64)
    return {"v": values, "x": np.stack([values, -values], axis=1).astype(np.float32)}


def _batch(first_goal=7, offset=0.0):
    """Two episodes; states[b, t] is filled with 10 * b + t + offset."""
    values = 10.0 * np.arange(2)[:, None] + np.arange(4)[None, :] + offset
    states = np.broadcast_to(values[:, :, None, None, None], (2, 4, 1, 4, 4)).astype(np.float32)
    return TrajectoryBatch(states=states, selections=np.array([[0, 1, 2], [3, 2, 1]], dtype=np.int16),
                           goal_indices=np.array([first_goal, 2], dtype=np.int64),
                           final_loss=np.array([0.5, 1.25], dtype=np.float32), weight_version=3)


def _tables(seed=0, spec=SPEC):
    return ReplayTables(REPLAY, spec, q_batch=4, insert_transitions=6, seed=seed)


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


def test_memory_evicts_oldest_first():
    memory = _memory()
    memory.insert(_items([1, 2, 3]))
    memory.insert(_items([4, 5, 6]))
    arrays = memory.state_arrays()
    assert arrays["v"].tolist() == [3, 4, 5, 6]
    assert arrays["x"][:, 1].tolist() == [-3, -4, -5, -6]
    assert memory.size == 4 and memory.inserted_total == 6


def test_memory_insert_larger_than_capacity_keeps_newest():
    memory = _memory()
    memory.insert(_items([1, 2]))
    memory.insert(_items(list(range(10, 17))))
    assert memory.state_arrays()["v"].tolist() == [13, 14, 15, 16]
    assert memory.inserted_total == 9
    memory.insert(_items([20]))
    assert memory.state_arrays()["v"].tolist() == [14, 15, 16, 20]


def test_memory_partial_fill_state_arrays():
    memory = _memory()
    memory.insert(_items([7, 8]))
    assert memory.state_arrays()["v"].tolist() == [7, 8] and memory.size == 2


def test_memory_samples_only_held_items():
    memory = _memory(capacity=8)
    memory.insert(_items([7, 8, 9]))
    sample = memory.sample(600, np.random.default_rng(0))
    assert set(sample["v"].tolist()) == {7, 8, 9}
    np.testing.assert_array_equal(sample["x"][:, 0], sample["v"])


def test_memory_samples_only_survivors_after_eviction():
    memory = _memory()
    memory.insert(_items([1, 2, 3, 4, 5, 6]))
    assert set(memory.sample(400, np.random.default_rng(1))["v"].tolist()) == {3, 4, 5, 6}


def test_memory_sample_empty_raises():
    with pytest.raises(RuntimeError):
        _memory().sample(1, np.random.default_rng(0))


def test_memory_restore_round_trip():
    memory = _memory()
    memory.insert(_items([1, 2, 3, 4, 5]))
    other = _memory()
    other.insert(_items([99]))
    other.restore(memory.state_arrays(), memory.inserted_total)
    assert other.state_arrays()["v"].tolist() == [2, 3, 4, 5]
    assert other.size == 4 and other.inserted_total == 5
    other.insert(_items([6]))
    assert other.state_arrays()["v"].tolist() == [3, 4, 5, 6]


def test_memory_restore_into_smaller_capacity_keeps_newest():
    memory = _memory()
    memory.insert(_items([1, 2, 3, 4]))
    small = _memory(capacity=2)
    small.restore(memory.state_arrays(), 4)
    assert small.state_arrays()["v"].tolist() == [3, 4]


@pytest.mark.parametrize("change", [
    lambda a: {**a, "x": np.zeros((len(a["v"]), 3), np.float32)},
    lambda a: {**a, "x": a["x"].astype(np.float64)},
    lambda a: {"v": a["v"]},
    lambda a: {**a, "v": a["v"][:-1]},
])
def test_memory_restore_bad_columns_refused_intact(change):
    memory = _memory()
    memory.insert(_items([1, 2, 3]))
    saved = _memory()
    saved.insert(_items([5, 6]))
    with pytest.raises(CheckpointError):
        memory.restore(change(saved.state_arrays()), 2)
    assert memory.state_arrays()["v"].tolist() == [1, 2, 3]
    assert memory.size == 3 and memory.inserted_total == 3
    memory.insert(_items([4]))
    assert memory.state_arrays()["v"].tolist() == [1, 2, 3, 4]


def _limiter():
    return SampleToInsertRatio(samples_per_insert=2.0, min_size_to_sample=10, error_buffer=5.0)  # offset 20


def test_limiter_no_sampling_before_min_size():
    limiter = _limiter()
    limiter.record_insert(9)
    assert not limiter.can_sample(1)
    limiter.record_insert(1)
    assert limiter.can_sample(1)


def test_limiter_inserts_free_before_min_size():
    limiter = _limiter()
    limiter.record_insert(9)
    assert limiter.can_insert(1000)


def test_limiter_sample_side_band():
    limiter = _limiter()
    limiter.record_insert(10)  # diff 20
    assert limiter.can_sample(5)  # 15 >= 15
    assert not limiter.can_sample(6)  # 14 < 15
    limiter.record_sample(5)
    assert not limiter.can_sample(1)
    limiter.record_insert(1)  # diff 17
    assert limiter.can_sample(2) and not limiter.can_sample(3)


def test_limiter_insert_side_band():
    limiter = _limiter()
    limiter.record_insert(10)  # diff 20, upper edge 25
    assert limiter.can_insert(2)  # 24 <= 25
    assert not limiter.can_insert(3)  # 26 > 25
    limiter.record_sample(4)  # diff 16
    assert limiter.can_insert(4) and not limiter.can_insert(5)


def test_limiter_stays_in_band_when_obeyed():
    limiter = _limiter()
    rng = np.random.default_rng(0)
    for _ in range(500):
        if rng.random() < 0.5:
            if limiter.can_insert(1):
                limiter.record_insert(1)
        elif limiter.can_sample(3):
            limiter.record_sample(3)
        if limiter.inserts >= 10:
            assert 15 <= limiter.diff() <= 25


def test_tables_insert_gc_transitions():
    tables = _tables()
    tables.insert(_batch())
    gc = tables.gc_transitions.state_arrays()
    assert gc["state"][:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert gc["next_state"][:, 0, 0, 0].tolist() == [1, 2, 3, 11, 12, 13]
    assert gc["step"].tolist() == [0, 1, 2, 0, 1, 2]
    assert gc["selection"].tolist() == [0, 1, 2, 3, 2, 1]
    assert gc["loss"].tolist() == [0.0, 0.0, 0.5, 0.0, 0.0, 1.25]
    assert gc["goal_index"].tolist() == [7, 7, 7, 2, 2, 2]
    assert gc["state"].shape == (6, 1, 4, 4)


def test_tables_insert_selections_and_sequences():
    tables = _tables()
    tables.insert(_batch())
    sel = tables.selections.state_arrays()
    assert sel["state"][:, 0, 3, 3].tolist() == [0, 1, 2, 10, 11, 12]
    assert sel["step"].tolist() == [0, 1, 2, 0, 1, 2]
    assert sel["selection"].tolist() == [0, 1, 2, 3, 2, 1]
    seq = tables.proposal_sequences.state_arrays()
    assert seq["selections"].tolist() == [[0, 1, 2], [3, 2, 1]]
    assert seq["goal_index"].tolist() == [7, 2]
    assert tables.limiter.inserts == 6
    assert tables.sizes() == {"gc_transitions": 6, "selections": 6, "proposal_sequences": 2}


def test_tables_insert_from_message():
    tables = _tables()
    tables.insert(TrajectoryBatch.from_message(_batch().to_message(), SPEC))
    assert tables.gc_transitions.state_arrays()["next_state"][:, 0, 0, 0].tolist() == [1, 2, 3, 11, 12, 13]


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


def _used_tables(seed=5):
    tables = _tables(seed=seed)
    tables.insert(_batch())
    tables.sample(SampleRequest(4, 4, 2))
    return tables


def test_tables_round_trip_contents_and_counters():
    tables = _used_tables()
    restored = _tables(seed=123)
    restored.restore(tables.to_message())
    _assert_same(_snapshot(tables), _snapshot(restored))


def test_tables_round_trip_next_sample_matches():
    tables = _used_tables()
    restored = _tables(seed=123)
    restored.restore(tables.to_message())
    _assert_same_sample(tables.sample(SampleRequest(6, 6, 3)), restored.sample(SampleRequest(6, 6, 3)))


def test_tables_round_trip_next_sample_matches_after_wraparound():
    tables = _tables(seed=5)
    for offset in (0.0, 100.0, 200.0):  # 18 transitions into a ring of 12: it wraps
        tables.insert(_batch(offset=offset))
    restored = _tables(seed=123)
    restored.restore(tables.to_message())
    _assert_same_sample(tables.sample(SampleRequest(6, 6, 3)), restored.sample(SampleRequest(6, 6, 3)))


def test_tables_restore_foreign_spec_refused_intact():
    other_spec = TrajectorySpec(image_shape=(1, 4, 4), horizon=3, num_proposals=4, num_goals=11)
    foreign = _tables(spec=other_spec)
    foreign.insert(_batch(offset=50.0))
    tables = _used_tables()
    before = _snapshot(tables)
    with pytest.raises(CheckpointError):
        tables.restore(foreign.to_message())
    _assert_same(before, _snapshot(tables))


def test_tables_restore_bad_last_column_refused_intact():
    arrays, meta = unpack_arrays(_used_tables(seed=9).to_message(), "replay_shard")
    arrays = dict(arrays)
    arrays["proposal_sequences/selections"] = np.zeros((2, 4), np.int16)  # H + 1 columns
    tables = _tables()
    tables.insert(_batch(offset=30.0))
    before = _snapshot(tables)
    with pytest.raises(CheckpointError):
        tables.restore(pack_arrays("replay_shard", arrays, meta))
    _assert_same(before, _snapshot(tables))


def test_tables_restore_missing_meta_refused_intact():
    arrays, meta = unpack_arrays(_used_tables().to_message(), "replay_shard")
    del meta["limiter"]
    tables = _used_tables(seed=1)
    before = _snapshot(tables)
    with pytest.raises(CheckpointError):
        tables.restore(pack_arrays("replay_shard", arrays, meta))
    _assert_same(before, _snapshot(tables))
