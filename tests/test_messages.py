import msgpack
import numpy as np
import pytest

from buffers.tables import ReplayTables
from common.method.config import ReplayConfig
from common.errors import MessageError
from common.storage.messages import TrajectoryBatch, TrajectorySpec, pack_arrays, unpack_arrays

SPEC = TrajectorySpec(image_shape=(1, 4, 4), horizon=3, num_proposals=4, num_goals=10)
REPLAY = ReplayConfig(gc_capacity=12, selection_capacity=12, proposal_capacity=4, min_size_to_sample=3)


def _arrays():
    states = np.arange(2 * 4 * 16, dtype=np.float32).reshape(2, 4, 1, 4, 4) / 7.0
    return {"states": states, "selections": np.array([[0, 1, 2], [3, 2, 1]], dtype=np.int16),
            "goal_indices": np.array([7, 9], dtype=np.int64), "final_loss": np.array([0.5, 1.25], dtype=np.float32)}


def _batch(**changes):
    return TrajectoryBatch(**{**_arrays(), **changes})


def _field(array):
    array = np.asarray(array)
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.tobytes()}


def _raw(arrays=None, meta=None, kind="trajectories", fmt=1):
    """A message built field by field, so any part can be broken."""
    fields = {k: (v if isinstance(v, dict) else _field(v)) for k, v in (arrays or _arrays()).items()}
    return msgpack.packb({"format": fmt, "kind": kind, "meta": meta or {"weight_version": 2, "weight_lag": 1},
                          "arrays": fields}, use_bin_type=True)


def _with(name, value):
    return _raw({**_arrays(), name: value})


def _without(name):
    arrays = _arrays()
    del arrays[name]
    return _raw(arrays)


def _states_with(index, value):
    states = _arrays()["states"].copy()
    states[index] = value
    return states


BAD_MESSAGES = {
    "garbage": b"\xc1\x00\xff garbage",
    "truncated": _raw()[:-5],
    "empty": b"",
    "not_a_map": msgpack.packb([1, 2, 3]),
    "wrong_kind": pack_arrays("replay_sample", _arrays()),
    "wrong_format": _raw(fmt=2),
    "no_arrays_map": msgpack.packb({"format": 1, "kind": "trajectories", "meta": {}}),
    "wrong_dtype_selections": _with("selections", _arrays()["selections"].astype(np.int64)),
    "wrong_dtype_states": _with("states", _arrays()["states"].astype(np.float16)),
    "unallowed_dtype": _with("final_loss", _arrays()["final_loss"].astype(np.float64)),
    "wrong_shape_states": _with("states", _arrays()["states"][:, :3]),
    "wrong_image_shape": _with("states", np.zeros((2, 4, 1, 4, 5), np.float32)),
    "wrong_batch_final_loss": _with("final_loss", np.zeros(3, np.float32)),
    "byte_count_short": _with("states", {**_field(_arrays()["states"]),
                                         "data": _arrays()["states"].tobytes()[:-4]}),
    "byte_count_long": _with("goal_indices", {**_field(_arrays()["goal_indices"]),
                                              "data": _arrays()["goal_indices"].tobytes() + b"\0" * 8}),
    "negative_dim": _with("final_loss", {"dtype": "float32", "shape": [-2], "data": b""}),
    "extra_field_key": _with("final_loss", {**_field(_arrays()["final_loss"]), "strides": [4]}),
    "selection_equals_a": _with("selections", np.array([[0, 1, 4], [3, 2, 1]], np.int16)),
    "selection_negative": _with("selections", np.array([[0, -1, 2], [3, 2, 1]], np.int16)),
    "goal_equals_num_goals": _with("goal_indices", np.array([7, 10], np.int64)),
    "goal_negative": _with("goal_indices", np.array([-1, 9], np.int64)),
    "nan_in_states": _with("states", _states_with((1, 2, 0, 3, 1), np.nan)),
    "inf_in_states": _with("states", _states_with((0, 0, 0, 0, 0), np.inf)),
    "nan_final_loss": _with("final_loss", np.array([0.5, np.nan], np.float32)),
    "missing_states": _without("states"),
    "missing_final_loss": _without("final_loss"),
    "extra_array": _raw({**_arrays(), "rewards": np.zeros(2, np.float32)}),
    "missing_meta_version": _raw(meta={"weight_lag": 0}),
    "non_int_meta": _raw(meta={"weight_version": "3", "weight_lag": 0}),
    "negative_weight_lag": _raw(meta={"weight_version": 3, "weight_lag": -1}),
}


def test_round_trip_preserves_everything():
    batch = TrajectoryBatch(**_arrays(), weight_version=5, weight_lag=2)
    back = TrajectoryBatch.from_message(batch.to_message(), SPEC)
    for name, array in _arrays().items():
        np.testing.assert_array_equal(getattr(back, name), array)
        assert getattr(back, name).dtype == array.dtype
    assert (back.weight_version, back.weight_lag) == (5, 2)


def test_round_trip_casts_to_wire_dtypes():
    batch = _batch(selections=np.array([[0, 1, 2], [3, 2, 1]], np.int64), goal_indices=np.array([7, 9], np.int32))
    back = TrajectoryBatch.from_message(batch.to_message(), SPEC)
    assert back.selections.dtype == np.int16 and back.goal_indices.dtype == np.int64
    assert back.selections.tolist() == [[0, 1, 2], [3, 2, 1]] and back.goal_indices.tolist() == [7, 9]


def test_raw_builder_makes_a_valid_message():
    assert len(TrajectoryBatch.from_message(_raw(), SPEC)) == 2


def test_accepts_bytearray_and_memoryview():
    payload = _batch().to_message()
    assert len(TrajectoryBatch.from_message(bytearray(payload), SPEC)) == 2
    assert len(TrajectoryBatch.from_message(memoryview(payload), SPEC)) == 2


def test_empty_batch_is_valid():
    batch = TrajectoryBatch(np.zeros((0, 4, 1, 4, 4), np.float32), np.zeros((0, 3), np.int16),
                            np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert len(TrajectoryBatch.from_message(batch.to_message(), SPEC)) == 0


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_bad_message_refused(name):
    with pytest.raises(MessageError):
        TrajectoryBatch.from_message(BAD_MESSAGES[name], SPEC)


@pytest.mark.parametrize("payload", ["a string", {"format": 1}, None, 42, [b"bytes"]])
def test_non_bytes_payload_refused(payload):
    with pytest.raises(MessageError, match="must be bytes"):
        TrajectoryBatch.from_message(payload, SPEC)


def test_pack_arrays_refuses_unlisted_dtype():
    with pytest.raises(TypeError):
        pack_arrays("trajectories", {"x": np.zeros(2, np.float64)})


def test_unpack_arrays_round_trip_meta():
    arrays, meta = unpack_arrays(pack_arrays("k", {"a": np.array([[1, 2]], np.uint8)}, {"n": 3}), "k")
    assert arrays["a"].tolist() == [[1, 2]] and arrays["a"].dtype == np.uint8 and meta == {"n": 3}


def test_scalar_goal_indices_refused_with_message_error():
    with pytest.raises(MessageError):
        TrajectoryBatch.from_message(_with("goal_indices", np.array(7, np.int64)), SPEC)


def test_overflowing_shape_refused_with_message_error():
    with pytest.raises(MessageError):
        TrajectoryBatch.from_message(_with("final_loss", {"dtype": "float32", "shape": [2**32, 2**32],
                                                          "data": b""}), SPEC)


def test_bool_shape_refused_with_message_error():
    with pytest.raises(MessageError):
        TrajectoryBatch.from_message(_with("final_loss", {"dtype": "float32", "shape": [True],
                                                          "data": b"\0" * 4}), SPEC)


def _filled_tables():
    tables = ReplayTables(REPLAY, SPEC, q_batch=4, insert_transitions=6, seed=0)
    tables.insert(_batch())
    return tables


def _snapshot(tables):
    contents = {f"{m.name}/{k}": v.copy() for m in tables.memories() for k, v in m.state_arrays().items()}
    counters = [(m.size, m.inserted_total, m._next) for m in tables.memories()]
    return contents, counters, (tables.limiter.inserts, tables.limiter.samples), tables.rng.bit_generator.state


def _assert_unchanged(before, tables):
    after = _snapshot(tables)
    assert before[1:] == after[1:]
    assert before[0].keys() == after[0].keys()
    for key in before[0]:
        np.testing.assert_array_equal(before[0][key], after[0][key])


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_refused_message_leaves_tables_unchanged(name):
    tables = _filled_tables()
    before = _snapshot(tables)
    with pytest.raises(MessageError):
        tables.insert(TrajectoryBatch.from_message(BAD_MESSAGES[name], SPEC))
    _assert_unchanged(before, tables)


BAD_BATCHES = {
    "selection_too_large": dict(selections=np.array([[0, 1, 2], [3, 2, 4]], np.int16)),
    "selection_negative": dict(selections=np.array([[0, -2, 2], [3, 2, 1]], np.int16)),
    "selection_int64": dict(selections=np.array([[0, 1, 2], [3, 2, 1]], np.int64)),
    "goal_too_large": dict(goal_indices=np.array([7, 12], np.int64)),
    "goal_negative": dict(goal_indices=np.array([-3, 9], np.int64)),
    "states_float64": dict(states=_arrays()["states"].astype(np.float64)),
    "states_short": dict(states=_arrays()["states"][:, :3]),
    "states_nan": dict(states=_states_with((0, 3, 0, 0, 0), np.nan)),
    "loss_inf": dict(final_loss=np.array([np.inf, 0.0], np.float32)),
    "loss_wrong_batch": dict(final_loss=np.zeros(1, np.float32)),
    "negative_version": dict(weight_version=-1),
}


@pytest.mark.parametrize("name", sorted(BAD_BATCHES))
def test_refused_batch_leaves_tables_unchanged(name):
    tables = _filled_tables()
    before = _snapshot(tables)
    with pytest.raises(MessageError):
        tables.insert(_batch(**BAD_BATCHES[name]))
    _assert_unchanged(before, tables)


def test_good_insert_after_refusals_still_works():
    tables = _filled_tables()
    with pytest.raises(MessageError):
        tables.insert(_batch(**BAD_BATCHES["goal_too_large"]))
    tables.insert(_batch(goal_indices=np.array([1, 3], np.int64)))
    assert tables.proposal_sequences.state_arrays()["goal_index"].tolist() == [7, 9, 1, 3]
    assert tables.limiter.inserts == 12


def test_posteriors_round_trip_and_must_be_distributions():
    soft = np.full((2, 3, 4), 0.25, np.float16)
    back = TrajectoryBatch.from_message(_batch(posteriors=soft).to_message(), SPEC)
    assert np.array_equal(back.posteriors, soft)
    assert TrajectoryBatch.from_message(_batch().to_message(), SPEC).posteriors is None  # the rule's choices
    for bad in (np.full((2, 3, 4), 0.5, np.float16), np.full((2, 3, 5), 0.2, np.float16)):
        with pytest.raises(MessageError, match="posteriors"):
            TrajectoryBatch.from_message(_batch(posteriors=bad).to_message(), SPEC)
