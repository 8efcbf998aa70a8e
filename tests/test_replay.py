import numpy as np
import pytest

from buffers.memory import Column, ReplayMemory
from buffers.rate_limiter import SampleToInsertRatio
from common.errors import CheckpointError


def _memory(capacity=4):
    return ReplayMemory("m", {"v": Column((), "int64"), "x": Column((2,), "float32")}, capacity)


def _items(values):
    values = np.asarray(values, dtype=np.int64)
    return {"v": values, "x": np.stack([values, -values], axis=1).astype(np.float32)}


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
