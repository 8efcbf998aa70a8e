"""msgpack encoding of arrays and trajectory batches: the only format data crosses processes in.

Nothing is ever unpickled: a payload is a msgpack map whose arrays are raw bytes with dtype and
shape. Decoding checks every field (kind, dtypes, shapes, byte counts, index ranges, finiteness)
and raises MessageError before the receiver touches its own state, so a bad message is refused
whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import msgpack
import numpy as np
import torch

from common.errors import MessageError

FORMAT_VERSION = 1
MAX_DIMS = 8
ALLOWED_DTYPES = ("float32", "float16", "int64", "int32", "int16", "uint8", "bool")


def pack_arrays(kind: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> bytes:
    """Encode named arrays (C-contiguous raw bytes) plus plain metadata under a message kind."""
    fields = {}
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.name not in ALLOWED_DTYPES:
            raise TypeError(f"array {name!r} has dtype {array.dtype}, not one of {ALLOWED_DTYPES}")
        fields[name] = {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.tobytes()}
    return msgpack.packb({"format": FORMAT_VERSION, "kind": kind, "meta": meta or {}, "arrays": fields},
                         use_bin_type=True)


def unpack_arrays(payload: bytes, kind: str) -> tuple[dict[str, np.ndarray], dict]:
    """Decode what pack_arrays made, refusing anything else with a MessageError naming the problem."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MessageError(f"{kind} message must be bytes, got {type(payload).__name__}")
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise MessageError(f"{kind} message is not valid msgpack: {exc}") from exc
    if not isinstance(message, dict) or message.get("format") != FORMAT_VERSION or message.get("kind") != kind:
        got = message.get("kind") if isinstance(message, dict) else type(message).__name__
        raise MessageError(f"expected a {kind!r} message of format {FORMAT_VERSION}, got {got!r}")
    arrays = message.get("arrays")
    if not isinstance(arrays, dict) or not isinstance(message.get("meta"), dict):
        raise MessageError(f"{kind} message lacks its 'arrays' or 'meta' map")
    return {name: _decode_array(kind, name, field) for name, field in arrays.items()}, message["meta"]


def _is_dim(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decode_array(kind: str, name: str, field) -> np.ndarray:
    if not isinstance(field, dict) or set(field) != {"dtype", "shape", "data"}:
        raise MessageError(f"{kind} message: array {name!r} must have exactly dtype, shape and data")
    dtype, shape, data = field["dtype"], field["shape"], field["data"]
    if dtype not in ALLOWED_DTYPES:
        raise MessageError(f"{kind} message: array {name!r} has dtype {dtype!r}, expected one of {ALLOWED_DTYPES}")
    if not isinstance(shape, list) or not all(_is_dim(d) for d in shape) or len(shape) > MAX_DIMS:
        raise MessageError(f"{kind} message: array {name!r} has shape {shape!r}, "
                           f"expected at most {MAX_DIMS} non-negative ints")
    if not isinstance(data, bytes):
        raise MessageError(f"{kind} message: array {name!r} data must be bytes")
    expected = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow on huge shapes
    if len(data) != expected:
        raise MessageError(f"{kind} message: array {name!r} has {len(data)} bytes, expected "
                           f"{expected} for shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


@dataclass(frozen=True)
class TrajectorySpec:
    """What a receiver accepts: the image shape, H, A and the number of goals it indexes."""

    image_shape: tuple[int, int, int]
    horizon: int
    num_proposals: int
    num_goals: int


@dataclass
class TrajectoryBatch:
    """B GC-agent episodes as actors send them; goals travel as dataset indices, never pixels."""

    states: np.ndarray  # [B, H+1, C, H, W] float32: x_1 .. x_{H+1}
    selections: np.ndarray  # [B, H] int16: a_1 .. a_H
    goal_indices: np.ndarray  # [B] int64
    final_loss: np.ndarray  # [B] float32
    weight_version: int = 0  # version of the weights that acted
    weight_lag: int = 0  # versions the actor was behind the newest published when it acted
    posteriors: np.ndarray | None = None  # [B, H, A] float16: the GC-agent's distribution over each step's
    # selections (soft S-select targets); None: one-hot choices, as for the paper's rule

    def __len__(self) -> int:
        return self.goal_indices.shape[0]

    def to_message(self) -> bytes:
        """msgpack bytes for the trip from a rollout actor to a replay shard."""
        arrays = {"states": self.states.astype(np.float32, copy=False),
                  "selections": self.selections.astype(np.int16, copy=False),
                  "goal_indices": self.goal_indices.astype(np.int64, copy=False),
                  "final_loss": self.final_loss.astype(np.float32, copy=False)}
        if self.posteriors is not None:
            arrays["posteriors"] = self.posteriors.astype(np.float16, copy=False)
        meta = {"weight_version": int(self.weight_version), "weight_lag": int(self.weight_lag)}
        return pack_arrays("trajectories", arrays, meta)

    @classmethod
    def from_message(cls, payload: bytes, spec: TrajectorySpec) -> TrajectoryBatch:
        """Decode and check against the receiver's spec; raises MessageError, never half-builds."""
        arrays, meta = unpack_arrays(payload, "trajectories")
        expected = {"states", "selections", "goal_indices", "final_loss"}
        if set(arrays) - {"posteriors"} != expected:
            raise MessageError(f"trajectories message has arrays {sorted(arrays)}, expected {sorted(expected)} "
                               "and optionally posteriors")
        batch = cls(arrays["states"], arrays["selections"], arrays["goal_indices"], arrays["final_loss"],
                    _meta_int(meta, "weight_version"), _meta_int(meta, "weight_lag"), arrays.get("posteriors"))
        batch.check(spec)
        return batch

    def check(self, spec: TrajectorySpec) -> None:
        """Shapes, dtypes, index ranges and finiteness, each refusal naming the field and the bound."""
        if self.goal_indices.ndim != 1:
            raise MessageError(f"trajectories message: goal_indices has shape {list(self.goal_indices.shape)}, "
                               "expected one index per episode [B]")
        b, h = len(self), spec.horizon
        _expect(self.states, "states", (b, h + 1) + tuple(spec.image_shape), "float32")
        _expect(self.selections, "selections", (b, h), "int16")
        _expect(self.goal_indices, "goal_indices", (b,), "int64")
        _expect(self.final_loss, "final_loss", (b,), "float32")
        if self.posteriors is not None:
            self._check_posteriors(spec)
        _in_range(self.selections, "selections", spec.num_proposals)
        _in_range(self.goal_indices, "goal_indices", spec.num_goals)
        if not (np.isfinite(self.states).all() and np.isfinite(self.final_loss).all()):
            raise MessageError("trajectories message holds non-finite states or losses")

        if self.weight_version < 0 or self.weight_lag < 0:
            raise MessageError(f"trajectories message has negative weight version {self.weight_version} "
                               f"or lag {self.weight_lag}")


    def _check_posteriors(self, spec: TrajectorySpec) -> None:
        _expect(self.posteriors, "posteriors", (len(self), spec.horizon, spec.num_proposals), "float16")
        sums = self.posteriors.astype(np.float32).sum(axis=-1)
        if not (np.isfinite(sums).all() and (self.posteriors >= 0).all() and np.allclose(sums, 1.0, atol=0.02)):
            raise MessageError("trajectories message: posteriors must be distributions over the A selections "
                               "(non-negative, each step summing to 1)")


def _meta_int(meta: dict, key: str) -> int:
    value = meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError(f"trajectories message meta {key!r} must be an int, got {value!r}")
    return value


def _expect(array: np.ndarray, name: str, shape: tuple, dtype: str) -> None:
    if array.dtype.name != dtype or tuple(array.shape) != tuple(shape):
        raise MessageError(f"trajectories message: {name} is {array.dtype.name}{list(array.shape)}, "
                           f"expected {dtype}{list(shape)}")


def _in_range(array: np.ndarray, name: str, bound: int) -> None:
    if array.size and (array.min() < 0 or array.max() >= bound):
        raise MessageError(f"trajectories message: {name} range [{array.min()}, {array.max()}] "
                           f"outside [0, {bound})")


def pack_weights(weights: dict[str, np.ndarray], version: int, updates: int | None = None) -> bytes:
    """One published version of the agent's weights, as the learner puts it in the object store.

    `updates` (the learner steps behind these weights) travels with them, so a process that evaluates
    them later (the evaluation actor) can say which point of training its figures belong to.
    """
    meta = {"version": int(version)} if updates is None else {"version": int(version), "updates": int(updates)}
    return pack_arrays("weights", {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}, meta)


def weights_updates(payload: bytes) -> int | None:
    """The learner steps a weights message was published at; None for one packed without them."""
    _, meta = unpack_arrays(payload, "weights")
    updates = meta.get("updates")
    if updates is not None and (not isinstance(updates, int) or isinstance(updates, bool) or updates < 0):
        raise MessageError(f"weights message updates must be an int >= 0, got {updates!r}")
    return updates


def unpack_weights(payload: bytes, expected: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], int]:
    """Decode weights and check them against the receiver's own parameter names and shapes."""
    arrays, meta = unpack_arrays(payload, "weights")
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise MessageError(f"weights message does not fit this agent: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != tuple(shape) or arrays[name].dtype.name != "float32":
            raise MessageError(f"weights message: {name} is {arrays[name].dtype.name}{list(arrays[name].shape)}, "
                               f"expected float32{list(shape)}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise MessageError(f"weights message version must be an int >= 0, got {version!r}")
    return arrays, version


def load_weights_message(agent: torch.nn.Module, payload: bytes) -> int:
    """Load a published weights message into `agent`; returns its version.

    Rollout actors and the driver's periodic evaluation receive weights the same way, and a message
    that does not fit the receiver's parameters is refused before any of them changes.
    """
    expected = {k: tuple(v.shape) for k, v in agent.state_dict().items()}
    arrays, version = unpack_weights(payload, expected)
    agent.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})  # copies: payload is read-only
    return version
