"""A one-line progress display and smoothed losses, the same for both runtimes."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass
class LossTracker:
    """Exponential moving averages of each loss kind, so a progress line is not one batch's noise."""

    decay: float = 0.95
    values: dict[str, float] = field(default_factory=dict)

    _window: dict[str, tuple[float, int]] = field(default_factory=dict)  # kind -> (sum, count) since window_means

    def update(self, losses: dict[str, float]) -> None:
        """Fold one step's (or one slice's mean) losses into the averages."""
        for kind, value in losses.items():
            old = self.values.get(kind)
            self.values[kind] = value if old is None else self.decay * old + (1 - self.decay) * value
            total, count = self._window.get(kind, (0.0, 0))
            self._window[kind] = (total + value, count + 1)

    def window_means(self) -> dict[str, float]:
        """The plain mean of each loss since the last call, so a logged curve counts every step once and none
        twice (the moving averages above lag and overlap); kinds with no step since are left out."""
        means = {kind: total / count for kind, (total, count) in self._window.items() if count}
        self._window = {}
        return means


@dataclass
class Throughput:
    """Counters and the rate at which they grew since a reader's previous reading.

    Each reader (the progress line, the TensorBoard log) keeps its own window, so reading one never
    shortens the other's.
    """

    env_steps: int = 0
    trajectories: int = 0
    updates: int = 0
    _since: tuple[float, int, int] = field(default_factory=lambda: (time.monotonic(), 0, 0))  # a new reader's start
    _last: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # reader -> (time, env steps, updates)

    def rates(self, reader: str = "progress") -> tuple[float, float]:
        """(environment steps per second, updates per second) since this reader's last call."""
        now = time.monotonic()
        then, steps, updates = self._last.get(reader, self._since)
        elapsed = max(now - then, 1e-9)
        self._last[reader] = (now, self.env_steps, self.updates)
        return (self.env_steps - steps) / elapsed, (self.updates - updates) / elapsed

    def rebase(self) -> None:
        """The counters were set from a checkpoint: rates count from here, not from zero."""
        self._since, self._last = (time.monotonic(), self.env_steps, self.updates), {}

    def restart_updates(self, updates: int) -> None:
        """A new learner counts from its checkpoint's updates: the next rate counts from there, never negative."""
        then, steps, _ = self._since
        self.updates, self._since = updates, (then, steps, updates)
        self._last = {reader: (when, env, updates) for reader, (when, env, _) in self._last.items()}


class ProgressPrinter:
    """Prints a status line every `every` seconds: updates, throughput, losses."""

    def __init__(self, total_updates: int, every: float, stream=None):
        self.total_updates, self.every = total_updates, every
        self.stream = stream or sys.stderr
        self._next = time.monotonic() + every
        self.started = time.monotonic()

    def maybe_print(self, counters: Throughput, losses: LossTracker, extra: str = "") -> None:
        """Print only if `every` seconds have passed, so callers can ask on every step."""
        if time.monotonic() >= self._next:
            self.print(counters, losses, extra)

    def print(self, counters: Throughput, losses: LossTracker, extra: str = "") -> None:
        """Print the status line now (the final line of a run, say)."""
        self._next = time.monotonic() + self.every
        env_rate, update_rate = counters.rates()
        loss_text = " ".join(f"{k} {v:.4f}" for k, v in sorted(losses.values.items()))
        line = (f"[{time.monotonic() - self.started:6.0f}s] updates {counters.updates}/{self.total_updates} | "
                f"env steps {counters.env_steps} ({env_rate:.0f}/s) | {update_rate:.1f} updates/s | "
                f"losses: {loss_text or '-'}{' | ' + extra if extra else ''}")
        print(line, file=self.stream, flush=True)
