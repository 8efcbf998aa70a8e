"""The one run loop both runtimes drive: stop conditions, the checkpoint clock, the final checkpoint, the summary.

A runtime (deploy/single_process.py, deploy/ray_driver.py) is any object with the small Runtime
interface below: it advances training by one unit of its own (one act-or-learn turn in one process,
a slice of learning and a poll of the actors on Ray), reports counters, losses, readings and
evaluations, saves checkpoints and releases its processes. Everything about *when* (stop, save, print,
log to TensorBoard) lives here, once.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from common.errors import CheckpointError
from common.method.config import ExperimentConfig
from common.storage.checkpoint import Checkpoint, load_checkpoint
from common.storage.data import GoalSet
from common.storage.run_state import check_compatible
from deploy.progress import LossTracker, ProgressPrinter, Throughput
from deploy.settings import RunOptions
from deploy.tracking import RunTracking, open_log
from evaluation.periodic import describe


@dataclass
class RunSummary:
    """What a finished run reports: counters, final smoothed losses, why it stopped, where it saved."""

    updates: int
    env_steps: int
    trajectories: int
    seconds: float
    losses: dict[str, float]
    stopped_by: str
    checkpoint: str | None
    stalled: str | None = None  # why this run made no learner update at all (None when it made some)


@dataclass
class ResumePoint:
    """The checkpoint --resume continues from, checked against the run, with its learner state decoded once."""

    checkpoint: Checkpoint
    state: dict  # the learner state (weights_only-loaded): learner, x1, rng, counters

    @property
    def updates(self) -> int:
        """Learner steps the checkpoint had taken."""
        return int(self.checkpoint.manifest["updates"])

    def restore_counters(self, counters: Throughput) -> None:
        """Continue the env-step and trajectory counts where the checkpoint left them."""
        saved = self.state.get("counters", {})
        counters.env_steps = int(saved.get("env_steps", 0))
        counters.trajectories = int(saved.get("trajectories", 0))
        counters.updates = self.updates
        counters.rebase()


def load_resume(options: RunOptions, config: ExperimentConfig, goals: GoalSet, num_shards: int,
                shards_hint: str = "") -> ResumePoint | None:
    """The checkpoint to resume from (None without --resume), refused in one line unless it fits this run's
    settings, data and shard count, before any process or Ray starts."""
    if not options.resume:
        return None
    checkpoint = load_checkpoint(options.checkpoint_dir)
    check_compatible(checkpoint.manifest, config, goals)
    held = len(checkpoint.replay_shards)
    if held != num_shards:
        raise CheckpointError(f"{checkpoint.path} holds {held} replay shards; resume with --num-replay-shards "
                              f"{held}{shards_hint}")
    point = ResumePoint(checkpoint, checkpoint.learner_state())
    print(f"resuming from {checkpoint.path} at update {point.updates}", flush=True)
    return point


class Runtime(Protocol):
    """What the run loop needs of a runtime."""

    counters: Throughput
    losses: LossTracker
    config: ExperimentConfig

    def advance(self) -> int:
        """One unit of training; returns the learner's total step count."""

    def status(self) -> str:
        """Extra text for progress lines ('' for none)."""

    def readings(self) -> dict[str, float | None]:
        """The runtime's own values for the logged curves: replay sizes, weight staleness, restarts."""

    def evaluations(self) -> list[dict]:
        """Evaluations finished (or run) since the last call, each labelled with its "updates"."""

    def save(self) -> str | None:
        """A periodic checkpoint now; its path, or None when none was written."""

    def stall_reason(self) -> str:
        """Why no learner update was made (what was not placed, or how far replay got), asked before finish()."""

    def finish(self) -> str | None:
        """Stop acting, write the final checkpoint, release every process; the checkpoint's path."""


def stop_reason(steps: int, options: RunOptions, stop: StopSignal, started: float) -> str | None:
    """Why the run must stop now (total-updates, a signal's name, time-limit), or None to go on."""
    if steps >= options.total_updates:
        return "total-updates"
    if stop:
        return stop.received
    if options.time_limit and time.monotonic() - started >= options.time_limit:
        return "time-limit"
    return None


def run_loop(runtime: Runtime, options: RunOptions, trackers: list | None = None) -> RunSummary:
    """Train until --total-updates, --time-limit or SIGINT/SIGTERM; every exit path leaves a final checkpoint.

    `trackers` (deploy/tracking.py) receive the curves and evaluations; by default the run's TensorBoard log
    (--log-dir), opened here and closed at the end. Trackers passed in are left open for the caller.
    """
    started, first_steps = time.monotonic(), runtime.counters.updates  # a resumed run counts from its checkpoint
    progress = ProgressPrinter(options.total_updates, options.progress_every)
    owned = trackers is None
    if owned:
        log = open_log(options, runtime.counters.updates, runtime.config.to_dict())
        trackers = [log] if log is not None else []
    tracking = RunTracking(trackers, options.log_every)
    try:
        with StopSignal() as stop:  # a signal during the final checkpoint is a flag too, not an interrupt
            steps, reason = _train(runtime, options, stop, progress, tracking)
            tracking.record(runtime, steps)
            status = runtime.status()
            progress.print(runtime.counters, runtime.losses, f"{status + ' | ' if status else ''}stopped by {reason}")
            stalled = runtime.stall_reason() if steps == first_steps else None
            path = runtime.finish()
    finally:
        if owned:
            tracking.close()
    return RunSummary(steps, runtime.counters.env_steps, runtime.counters.trajectories, time.monotonic() - started,
                      dict(runtime.losses.values), reason, path, stalled)


def _train(runtime: Runtime, options: RunOptions, stop: StopSignal, progress: ProgressPrinter,
           tracking: RunTracking) -> tuple[int, str]:
    """The turns of the run loop until a stop reason: (the learner's steps, the reason)."""
    started = progress.started
    next_save = started + options.checkpoint_every
    while True:
        steps = runtime.advance()
        reason = stop_reason(steps, options, stop, started)
        if reason:
            return steps, reason
        progress.maybe_print(runtime.counters, runtime.losses, runtime.status())
        tracking.maybe_record(runtime, steps)
        for result in runtime.evaluations():
            progress.print(runtime.counters, runtime.losses, describe(result))
            tracking.evaluation(result)
        if time.monotonic() >= next_save:
            runtime.save()
            next_save = time.monotonic() + options.checkpoint_every


class StopSignal:
    """Turns the first SIGINT or SIGTERM into a flag so the loop can finish its step and save.

    A second signal falls through to the default handler, so a stuck run can still be killed.
    """

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __bool__(self) -> bool:
        return self.received is not None
