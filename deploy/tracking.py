"""TensorBoard logs of a run: the loss curves, rates, replay and evaluations researchers compare runs by.

The run loop (deploy/loop.py) owns a RunTracking: every --log-every seconds it reads the runtime's
losses, rates and runtime readings into scalars, and hands over each evaluation (figures and the sample
and reconstruction grids). Both runtimes write the same tags, with the learner's update count as the
global step, so a run resumed from a checkpoint continues the same curves: its writer opens with
TensorBoard's `purge_step` just past the checkpoint's update, which hides the points an earlier process
wrote after it (it was killed after its last checkpoint). A learner restarted by the Ray driver from an older
checkpoint is handled the same way. Tags (docs/tracking.md):

    loss/<kind>                          mean loss of each kind over the interval (proposal, q, selection)
    throughput/updates_per_second        learner steps per second over the interval
    throughput/env_steps_per_second      environment steps per second over the interval
    progress/env_steps, progress/trajectories
    replay/<memory>                      items held (summed over replay shards)
    weights/staleness                    mean versions the acting weights were behind (0 in one process)
    weights/version, ray/learner_restarts, ray/actor_restarts, ray/actors_acting   (Ray runtime)
    eval/reconstruction_mse, eval/sample_fid (where computed); images eval/samples, eval/reconstructions

Nothing here imports Ray; the sweep (deploy/sweep.py) adds its own tracker beside this one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Iterable, Protocol

TAGS_DOC = "docs/tracking.md"


class Tracker(Protocol):
    """Where a run's readings go: a TensorBoard log, a Tune trial's reports."""

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """One point of each curve at learner update `step` (None: no value this time, e.g. no batch acted)."""

    def evaluation(self, result: dict) -> None:
        """A finished evaluation: {"updates", "reconstruction_mse", "sample_fid", optional "images" and
        "scalars"} (evaluation/periodic.py's result, labelled with its update)."""

    def close(self) -> None:
        """Flush and release."""


class TensorBoardLog:
    """A run's TensorBoard event files, written by torch.utils.tensorboard's SummaryWriter."""

    def __init__(self, folder: Path, start_step: int = 0, settings: dict | None = None):
        """`start_step`: the update the run starts from (0, or a resumed checkpoint's); every point an earlier
        writer left past it is dropped by TensorBoard's purge (those at it were written with the checkpoint)."""
        self.folder = Path(folder)
        self.writer = self._open(start_step + 1 if start_step else 0)
        self.last_step = start_step
        if settings is not None:
            text = "```\n" + json.dumps(settings, indent=2) + "\n```"  # TensorBoard's text plugin reads Markdown
            self.writer.add_text("run/settings", text, start_step)

    def _open(self, purge_step: int):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where a log is written

        return SummaryWriter(str(self.folder), purge_step=purge_step, flush_secs=30)

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """One point per tag (None skipped); a step behind the last one (a learner restarted from an older checkpoint) first
        reopens the log there, so the curve continues from the restart, not beside the lost updates."""
        if step < self.last_step:
            self.writer.close()
            self.writer = self._open(step)
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.last_step = step

    def evaluation(self, result: dict) -> None:
        """The evaluation's figures and grids at the update of the weights it evaluated; flushed at once, as
        evaluations are rare and the first thing a user opens the log for."""
        step = int(result["updates"])
        self.writer.add_scalar("eval/reconstruction_mse", result["reconstruction_mse"], step)
        if result.get("sample_fid") is not None:
            self.writer.add_scalar("eval/sample_fid", result["sample_fid"], step)
        for tag, value in result.get("scalars", {}).items():
            self.writer.add_scalar(tag, value, step)
        for name, pixels in result.get("images", {}).items():
            self.writer.add_image(f"eval/{name}", pixels, step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        """Write what is buffered and close the event file."""
        self.writer.close()


class RunTracking:
    """The run loop's side: when a point is due, what it holds, and the trackers it goes to."""

    def __init__(self, trackers: list, every: float):
        self.trackers, self.every = trackers, every
        self._next = time.monotonic() + every

    def maybe_record(self, runtime, step: int) -> None:
        """A point of every curve, if --log-every seconds have passed (callers may ask on every turn)."""
        if self.trackers and time.monotonic() >= self._next:
            self.record(runtime, step)

    def record(self, runtime, step: int) -> None:
        """A point of every curve now (the last one of a run, say)."""
        self._next = time.monotonic() + self.every
        values = run_scalars(runtime)
        for tracker in self.trackers:
            tracker.scalars(step, values)

    def evaluation(self, result: dict) -> None:
        """Hand a finished evaluation to every tracker."""
        for tracker in self.trackers:
            tracker.evaluation(result)

    def close(self) -> None:
        """Close every tracker."""
        for tracker in self.trackers:
            tracker.close()


def run_scalars(runtime) -> dict[str, float | None]:
    """The curves' values now: mean losses and rates over the interval, counters, the runtime's readings."""
    env_rate, update_rate = runtime.counters.rates("log")
    values = {f"loss/{kind}": value for kind, value in sorted(runtime.losses.window_means().items())}
    values.update({"throughput/updates_per_second": update_rate, "throughput/env_steps_per_second": env_rate,
                   "progress/env_steps": runtime.counters.env_steps,
                   "progress/trajectories": runtime.counters.trajectories})
    values.update(runtime.readings())
    return values


def open_log(options, start_step: int, settings: dict | None = None) -> TensorBoardLog | None:
    """The run's TensorBoard log where RunOptions.log_dir says (None: no log), announced in one line."""
    if options.log_dir is None:
        print("tensorboard log: none (pass --checkpoint-dir or --log-dir DIR for one)", flush=True)
        return None
    log = TensorBoardLog(options.log_dir, start_step, settings)
    print(f"tensorboard log: {options.log_dir} (tensorboard --logdir {options.log_dir})", flush=True)
    return log


def log_points(folder: Path, points: Iterable[tuple[int, dict[str, float]]]) -> None:
    """Append scalars at given steps to an existing log (a benchmark's figures computed after its run)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, values in points:
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
    writer.close()


def flat_scalars(reading: dict, prefix: str) -> dict[str, float]:
    """Every number in a nested reading as one tag, e.g. {"mse": {"q": 0.1}} -> {"<prefix>/mse/q": 0.1}
    (bench/quality.py's readings, logged as they are printed)."""
    flat = {}
    for key, value in reading.items():
        if isinstance(value, dict):
            flat.update(flat_scalars(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}/{key}"] = float(value)
    return flat
