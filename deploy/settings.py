"""The typed settings of a training run, each checked at construction so a bad value is one line naming it.

deploy/cli.py builds them from the command line; tests and benchmarks may build them directly. The
runtimes read these objects, never raw argparse fields, so a setting has one name and one check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.device import DEVICE_CHOICES
from common.errors import ConfigError
from common.method.config import (ExperimentConfig, check_choice, check_int_range, check_non_negative, check_positive,
                                  check_positive_int)
from evaluation.periodic import EvalOptions

RUNTIMES = ("ray", "single-process")
SEED_MAX = 2**32 - 1  # the largest seed numpy's legacy seeding takes (torch and default_rng take more)
RAY_RESOURCE_UNIT = 0.0001  # Ray refuses a non-zero resource quantity below this, with a traceback


@dataclass(frozen=True)
class DataOptions:
    """Which goals to train on and where they are."""

    dataset: str = "mnist"
    data_dir: Path | None = None
    download: bool = False
    num_goals: int | None = None  # train on the first N images only

    def __post_init__(self):
        if self.num_goals is not None:
            check_positive_int("--num-goals", self.num_goals)


@dataclass(frozen=True)
class RunOptions:
    """How long to train and where to save: the settings common to both runtimes."""

    total_updates: int = 10_000
    time_limit: float | None = None  # seconds of training; None for no limit
    checkpoint_dir: Path | None = None
    checkpoint_every: float = 600.0  # seconds between periodic checkpoints
    keep_checkpoints: int = 3
    resume: bool = False
    seed: int = 0
    device: str = "auto"  # the single-process trainer's; the Ray learner's follows --learner-gpus
    progress_every: float = 5.0  # seconds between progress lines
    threads: int | None = None  # torch CPU threads in this process; None keeps torch's default
    log_dir: Path | None = None  # the TensorBoard log of the run (deploy/tracking.py); None writes none
    log_every: float = 10.0  # seconds between two points of the logged curves

    def __post_init__(self):
        check_positive_int("--total-updates", self.total_updates)
        if self.time_limit is not None:
            check_positive("--time-limit", self.time_limit)
        check_positive("--checkpoint-every", self.checkpoint_every)
        check_positive_int("--keep-checkpoints", self.keep_checkpoints)
        check_int_range("--seed", self.seed, 0, SEED_MAX)
        check_choice("--device", self.device, DEVICE_CHOICES)
        check_positive("--progress-every", self.progress_every)
        if self.threads is not None:
            check_positive_int("--threads", self.threads)
        check_positive("--log-every", self.log_every)
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("--resume needs --checkpoint-dir to find the checkpoint to continue from")


@dataclass(frozen=True)
class RaySettings:
    """The Ray runtime's settings, checked whatever the runtime so a bad value is never silently carried along.

    A placement Ray could never schedule waits forever, and a bad port or count fails deep inside Ray or
    the metrics server with a traceback; here each is one line naming the flag.
    """

    num_actors: int | None = None  # None: one per CPU left over
    num_replay_shards: int = 1
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    learner_cpus: float = 1.0
    learner_gpus: float | None = None  # None: 1 if the cluster has a GPU
    eval_cpus: float = 0.0  # the evaluation actor's (none by default, so it never waits for a CPU actors took)
    eval_gpus: float = 0.0
    metrics_port: int = 8000  # -1: off, 0: any free port
    address: str | None = None  # None: start Ray locally (or join the one `ray start` recorded)
    publish_every: int = 20  # learner steps between weight versions
    shared_checkpoint_dir: bool = False  # every node mounts --checkpoint-dir: shards may spread
    max_learner_restarts: int = 3

    def __post_init__(self):
        if self.num_actors is not None:  # 0 is refused, not taken as "the default"
            check_positive_int("--num-actors", self.num_actors)
        check_positive_int("--num-replay-shards", self.num_replay_shards)
        check_positive("--actor-cpus", self.actor_cpus)
        check_positive("--learner-cpus", self.learner_cpus)
        for flag in ("--actor-gpus", "--learner-gpus", "--eval-cpus", "--eval-gpus"):
            if self._value(flag) is not None:
                check_non_negative(flag, self._value(flag))
        for flag in ("--actor-cpus", "--actor-gpus", "--learner-cpus", "--learner-gpus", "--eval-cpus", "--eval-gpus"):
            value = self._value(flag)
            if value is not None and 0 < value < RAY_RESOURCE_UNIT:
                raise ConfigError(f"{flag} must be at least {RAY_RESOURCE_UNIT} (Ray's smallest unit) when not 0, "
                                  f"got {value!r}")
        check_int_range("--metrics-port", self.metrics_port, -1, 65535, " (-1: off, 0: any free port)")
        check_positive_int("--publish-every", self.publish_every)
        check_int_range("--max-learner-restarts", self.max_learner_restarts, 0)

    def _value(self, flag: str):
        return getattr(self, flag[2:].replace("-", "_"))


@dataclass(frozen=True)
class TrainCommand:
    """Everything a training run needs, parsed and checked."""

    runtime: str
    preset_name: str
    preset_chosen: bool  # False: the default for this hardware
    config: ExperimentConfig
    data: DataOptions
    run: RunOptions
    evaluation: EvalOptions
    ray: RaySettings

    def __post_init__(self):
        check_choice("--runtime", self.runtime, RUNTIMES)
