"""A fixed-capacity replay memory: preallocated numpy columns, oldest-first eviction, uniform sampling.

One class serves the paper's three memories; each is just a different set of columns. Arrays are
preallocated so a full memory never reallocates, and its state is plain arrays so a checkpoint
can write it with msgpack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import CheckpointError


@dataclass(frozen=True)
class Column:
    """One field of every item: its per-item shape and dtype."""

    shape: tuple[int, ...]
    dtype: str


class ReplayMemory:
    """A ring of `capacity` items; inserting past capacity overwrites the oldest first."""

    def __init__(self, name: str, columns: dict[str, Column], capacity: int):
        self.name = name
        self.columns = columns
        self.capacity = capacity
        self._data = {k: np.zeros((capacity,) + c.shape, dtype=c.dtype) for k, c in columns.items()}
        self._next = 0  # slot the next item goes to
        self.size = 0
        self.inserted_total = 0

    def insert(self, items: dict[str, np.ndarray]) -> None:
        """Append a batch (every column batch-first, same length); callers check contents first."""
        count = len(next(iter(items.values())))
        if count > self.capacity:  # only the newest `capacity` would survive anyway
            items = {k: v[-self.capacity:] for k, v in items.items()}
            self.inserted_total += count - self.capacity
            count = self.capacity
        slots = (self._next + np.arange(count)) % self.capacity
        for key in self.columns:
            self._data[key][slots] = items[key]
        self._next = int((self._next + count) % self.capacity)
        self.size = min(self.capacity, self.size + count)
        self.inserted_total += count

    def sample(self, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`count` items drawn uniformly with replacement: column -> [count, *shape]."""
        if self.size == 0:
            raise RuntimeError(f"cannot sample from empty replay memory {self.name!r}")
        ages = rng.integers(0, self.size, size=count)  # drawn by age, so a restored copy draws the same items
        slots = self.slots(ages)
        return {key: column[slots] for key, column in self._data.items()}

    def slots(self, ages: np.ndarray) -> np.ndarray:
        """Where the items of these ages (0 = oldest held) sit in the columns."""
        return (self._oldest_slot() + ages) % self.capacity

    def array(self, key: str) -> np.ndarray:
        """The whole preallocated column [capacity, *shape]: views index it by slots() without a copy."""
        return self._data[key]

    def nbytes(self) -> int:
        """Bytes the preallocated columns take, full or not: what the memory costs its process."""
        return sum(column.nbytes for column in self._data.values())

    def _oldest_slot(self) -> int:
        return self._next if self.size == self.capacity else 0

    def _oldest_first(self) -> np.ndarray:
        return (self._oldest_slot() + np.arange(self.size)) % self.capacity

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The held items, oldest first, for a checkpoint (its capacity may differ on restore)."""
        order = self._oldest_first()
        return {key: column[order] for key, column in self._data.items()}

    def check_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Refuse saved columns that do not fit this memory, before anything is overwritten."""
        for key, column in self.columns.items():
            array = arrays.get(key)
            if array is None or array.shape[1:] != column.shape or array.dtype.name != column.dtype:
                got = None if array is None else f"{array.dtype.name}{list(array.shape)}"
                raise CheckpointError(f"replay memory {self.name!r} column {key!r} is {got}, "
                                      f"expected {column.dtype}[N, {', '.join(map(str, column.shape))}]")
        lengths = {len(arrays[k]) for k in self.columns}
        if len(lengths) != 1:
            raise CheckpointError(f"replay memory {self.name!r} columns have different lengths {sorted(lengths)}")

    def restore(self, arrays: dict[str, np.ndarray], inserted_total: int) -> None:
        """Refill from state_arrays(); keeps the newest items if the capacity has shrunk."""
        self.check_state(arrays)
        self.clear()
        if len(arrays[next(iter(self.columns))]):
            self.insert({k: arrays[k] for k in self.columns})
        self.inserted_total = inserted_total

    def clear(self) -> None:
        """Forget every item (the columns stay allocated)."""
        self._next, self.size, self.inserted_total = 0, 0, 0
