"""What every runtime shares around the method: run options, the agent's construction, stop signals.

Both the single-process reference and the Ray runtime build the agent, x_1 and the replay spec
the same way from here, so a checkpoint of one can be resumed or evaluated by the other.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from common.method.config import ExperimentConfig, check_positive, check_positive_int
from common.storage.data import GoalSet
from common.errors import ConfigError
from common.method.mdp import initial_state
from common.storage.messages import TrajectorySpec
from common.method.networks import VAgent


@dataclass(frozen=True)
class RunOptions:
    """How long to train and where to save: the flags common to both runtimes."""

    total_updates: int = 10_000
    time_limit: float | None = None  # seconds of training; None for no limit
    checkpoint_dir: Path | None = None
    checkpoint_every: float = 600.0  # seconds between periodic checkpoints
    keep_checkpoints: int = 3
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    progress_every: float = 5.0  # seconds between progress lines
    threads: int | None = None  # torch CPU threads in this process; None keeps torch's default

    def __post_init__(self):
        check_positive_int("--total-updates", self.total_updates)
        if self.time_limit is not None:
            check_positive("--time-limit", self.time_limit)
        check_positive("--checkpoint-every", self.checkpoint_every)
        check_positive_int("--keep-checkpoints", self.keep_checkpoints)
        check_positive("--progress-every", self.progress_every)
        if self.threads is not None:
            check_positive_int("--threads", self.threads)
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("--resume needs --checkpoint-dir to find the checkpoint to continue from")


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


def build_agent(config: ExperimentConfig, image_shape: tuple[int, int, int], seed: int) -> VAgent:
    """The three networks, seeded so that every runtime starts from the same weights."""
    torch.manual_seed(seed)
    return VAgent(image_shape, config.mdp, config.network)


def start_state(config: ExperimentConfig, goals: GoalSet) -> torch.Tensor:
    """x_1 [C, H, W] for this config and training set."""
    mean = goals.mean_image() if config.mdp.initial_state == "data_mean" else None
    return initial_state(config.mdp, goals.image_shape, mean)


def trajectory_spec(config: ExperimentConfig, goals: GoalSet) -> TrajectorySpec:
    """What replay accepts from actors in this run."""
    return TrajectorySpec(goals.image_shape, config.mdp.horizon, config.mdp.num_proposals, len(goals))


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
