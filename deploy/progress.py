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

    def update(self, losses: dict[str, float]) -> None:
        """Fold one step's (or one slice's mean) losses into the averages."""
        for kind, value in losses.items():
            old = self.values.get(kind)
            self.values[kind] = value if old is None else self.decay * old + (1 - self.decay) * value


@dataclass
class Throughput:
    """Counters and the rate at which they grew since the previous reading."""

    env_steps: int = 0
    trajectories: int = 0
    updates: int = 0
    _last: tuple[float, int, int] = field(default_factory=lambda: (time.monotonic(), 0, 0))

    def rates(self) -> tuple[float, float]:
        """(environment steps per second, updates per second) since the last call."""
        now = time.monotonic()
        then, steps, updates = self._last
        elapsed = max(now - then, 1e-9)
        self._last = (now, self.env_steps, self.updates)
        return (self.env_steps - steps) / elapsed, (self.updates - updates) / elapsed

    def restart_updates(self, updates: int) -> None:
        """A new learner counts from its checkpoint's updates: the next rate counts from there, never negative."""
        then, steps, _ = self._last
        self.updates, self._last = updates, (then, steps, updates)


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
