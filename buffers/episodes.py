"""Episodes stored once: one ring of whole GC-agent episodes, and the paper's per-step memories as views of it.

Algorithm 1 puts every step of an episode into two memories: GC transitions (x_h, h, a_h, x_{h+1}, loss_h,
goal) and S-select samples (x_h, h, a_h). Stored literally, every state x_h is kept three times (state and
next_state of a transition, state of a selection sample). Here each episode's H + 1 states are kept once, in
an EpisodeRing, and each per-step memory is a StepView: the newest `capacity` (episode, h) pairs of the ring,
drawn by age exactly as a ring of `capacity` separate transitions would be (age 0 is the oldest held step,
episode-major), so the learner sees the same batches as before for the same random stream.
"""

from __future__ import annotations

import numpy as np

from typing import Callable

from buffers.memory import Column, ReplayMemory

STATE_DTYPES = ("float32", "float16")


def episode_ring(image_shape: tuple[int, ...], horizon: int, num_proposals: int, capacity: int,
                 state_dtype: str) -> ReplayMemory:
    """A ring of `capacity` episodes: states x_1..x_{H+1}, selections a_1..a_H, goal, the final loss and the
    GC-agent's posterior over each step's A selections (one-hot for a rule without one)."""
    return ReplayMemory("episodes", {
        "states": Column((horizon + 1,) + tuple(image_shape), state_dtype),  # [H+1, C, H, W]
        "selections": Column((horizon,), "int16"),
        "goal_index": Column((), "int64"),
        "final_loss": Column((), "float32"),
        "posteriors": Column((horizon, num_proposals), "float16")}, capacity)


def one_hot_posteriors(selections: np.ndarray, num_proposals: int) -> np.ndarray:
    """[E, H] selections -> [E, H, A] float16 one-hot: the posteriors of episodes saved before they were kept."""
    return np.eye(num_proposals, dtype=np.float16)[selections.astype(np.int64)]


def episodes_needed(step_capacities: tuple[int, ...], horizon: int) -> int:
    """Episodes the ring must hold so every view can keep its newest `capacity` steps."""
    return max(-(-c // horizon) for c in step_capacities)


class StepView:
    """The newest `capacity` steps (x_h, h, ...) of an episode ring, as one of the paper's replay memories."""

    def __init__(self, name: str, episodes: ReplayMemory, horizon: int, capacity: int,
                 fields: Callable[[StepView, np.ndarray, np.ndarray], dict[str, np.ndarray]]):
        self.name, self.episodes, self.horizon, self.capacity = name, episodes, horizon, capacity
        self.fields = fields  # (view, slots, steps) -> the memory's columns: gc_transitions or selection_samples

    @property
    def size(self) -> int:
        """Steps this memory holds: all steps of the held episodes, up to its capacity."""
        return min(self.capacity, self.horizon * self.episodes.size)

    def locate(self, ages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ring slots, steps h) of the steps of these ages, 0 being the oldest this view holds."""
        first = self.horizon * self.episodes.size - self.size  # steps of the ring older than this view
        index = first + np.asarray(ages, dtype=np.int64)  # episode-major step index, oldest episode first
        return self.episodes.slots(index // self.horizon), (index % self.horizon).astype(np.int16)

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`count` steps uniformly with replacement, as (slots, steps); one rng.integers call, as a ring would."""
        if self.size == 0:
            raise RuntimeError(f"cannot sample from empty replay memory {self.name!r}")
        return self.locate(rng.integers(0, self.size, size=count))

    def sample(self, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`count` items drawn uniformly with replacement, column -> [count, *shape], as ReplayMemory.sample."""
        return self.fields(self, *self.draw(count, rng))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every held item, oldest first, as a ring of separate items would hold them: for inspection and tests."""
        return self.fields(self, *self.locate(np.arange(self.size)))


def gc_transitions(view: StepView, slots: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
    """GC transitions at (slot, h): x_h, h, a_h, x_{h+1}, the loss (non-zero only at h = H) and the goal."""
    ring, last = view.episodes, view.horizon - 1
    states = ring.array("states")  # [E, H+1, C, H, W]
    return {"state": states[slots, steps].astype(np.float32, copy=False), "step": steps,
            "selection": ring.array("selections")[slots, steps],
            "next_state": states[slots, steps + 1].astype(np.float32, copy=False),
            "loss": np.where(steps == last, ring.array("final_loss")[slots], 0.0).astype(np.float32, copy=False),
            "goal_index": ring.array("goal_index")[slots]}


def selection_samples(view: StepView, slots: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
    """S-select samples at (slot, h): x_h, h, the GC-agent's choice a_h and its posterior over the A selections."""
    ring = view.episodes
    return {"state": ring.array("states")[slots, steps].astype(np.float32, copy=False), "step": steps,
            "selection": ring.array("selections")[slots, steps],
            "posterior": ring.array("posteriors")[slots, steps].astype(np.float32)}
