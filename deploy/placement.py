"""Where the distributed runtime's processes go, and whether the Ray they go to can ever hold them.

Kept apart from the driver loop so the decisions taken before Ray starts (and their tests) need no
cluster. A local Ray is sized by this process, so a placement it could never schedule is refused in one
line instead of Ray waiting minutes and dying with a stack trace; a real cluster may still grow through
its autoscaler, so there a shortfall is only reported, with what the run waits for.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import ray

from common.method.config import check_non_negative, check_positive, check_positive_int
from common.errors import ConfigError
from deploy.settings import RaySettings
from actors.names import NAMESPACE
from buffers.shard import SHARD_CPUS

# A local Ray may hold at most this many logical CPUs per core. Rollout actors spend much of their time
# waiting for weights and for replay to accept their trajectories, so a few processes per core still make
# progress (the 2-core test machine runs 2 actors, a learner and shards); past 4x each process gets under a
# quarter of a core, and the memory of that many torch processes runs out before the run does anything useful.
OVERSUBSCRIPTION = 4


def _ray_temp_dir() -> Path:
    """Ray's own rule for its temp folder (RAY_TMPDIR, then TMPDIR on Linux, then /tmp)."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(base or "/tmp") / "ray"


RAY_START_RECORD = _ray_temp_dir() / "ray_current_cluster"  # written by `ray start`, removed by `ray stop`


@dataclass(frozen=True)
class Placement:
    """How many of each process and what each asks of the cluster."""

    num_actors: int
    num_shards: int
    actor_cpus: float
    actor_gpus: float
    learner_cpus: float
    learner_gpus: float
    eval_cpus: float = 0.0  # the evaluation actor's, when --eval-every asks for one
    eval_gpus: float = 0.0

    def __post_init__(self):
        check_positive_int("--num-actors", self.num_actors)
        check_positive_int("--num-replay-shards", self.num_shards)
        check_positive("--actor-cpus", self.actor_cpus)
        check_positive("--learner-cpus", self.learner_cpus)
        check_non_negative("--actor-gpus", self.actor_gpus)
        check_non_negative("--learner-gpus", self.learner_gpus)

    def cpus_needed(self) -> float:
        """Logical CPUs the run asks of the cluster (a local Ray is started with at least this many)."""
        return self.num_actors * self.actor_cpus + self.learner_cpus + self.num_shards * SHARD_CPUS + self.eval_cpus

    def gpus_needed(self) -> float:
        """GPUs the run asks of the cluster; Ray schedules nothing that would exceed them."""
        return self.learner_gpus + self.num_actors * self.actor_gpus + self.eval_gpus


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: --address, else RAY_ADDRESS, else the one `ray start` recorded on this node
    (as on a head node after `ray up`, where `ray submit` runs launch.py); None means start a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or ("auto" if RAY_START_RECORD.exists() else None)


def connect(address: str | None, wanted_cpus: float) -> bool:
    """Join the cluster at `address`, or (None) start a private Ray here; True when this process started it."""
    if address:
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level="WARNING")
        except ConnectionError as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc}); start it, run `ray stop` "
                              "to clear a stale record, or pass --address".splitlines()[0]) from exc
        print(f"joined the Ray cluster at {address} ({ray.cluster_resources().get('CPU', 0):.0f} CPUs)", flush=True)
        return False
    cpus = max(os.cpu_count() or 1, int(wanted_cpus + 0.999))  # a laptop may oversubscribe its cores
    ray.init(address="local", num_cpus=cpus, namespace=NAMESPACE, logging_level="WARNING")  # never join a stray one
    print(f"started a local Ray with {cpus} CPUs", flush=True)
    return True


def resolve_placement(settings: RaySettings, cluster: dict, evaluating: bool = False) -> Placement:
    """Fill defaults from the cluster: actors fill the CPUs left, the learner takes a GPU if any; the evaluation
    actor (when `evaluating`, i.e. --eval-every > 0) asks what --eval-cpus and --eval-gpus say.

    Nothing here is refused for being larger than the cluster: a local Ray is checked by
    check_local_placement, and a real cluster may still grow (report_cluster_shortfall).
    """
    s = settings
    learner_gpus = s.learner_gpus if s.learner_gpus is not None else (1.0 if cluster.get("GPU", 0) >= 1 else 0.0)
    eval_cpus, eval_gpus = (s.eval_cpus, s.eval_gpus) if evaluating else (0.0, 0.0)
    actors = s.num_actors if s.num_actors is not None else max(
        1, int(cluster.get("CPU", 1) - s.learner_cpus - SHARD_CPUS * s.num_replay_shards - eval_cpus))
    return Placement(actors, s.num_replay_shards, s.actor_cpus, s.actor_gpus, s.learner_cpus, learner_gpus,
                     eval_cpus, eval_gpus)


def amount(value: float, unit: str) -> str:
    """'1 GPU', '0.5 GPUs', '68 CPUs': resource counts as a person writes them."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} {unit}" + ("" if text == "1" else "s")


def check_local_placement(placement: Placement, cpus: int, gpus: int) -> None:
    """Refuse, before a local Ray starts, a placement it could never schedule on `cpus` cores and `gpus` GPUs.

    Ray would otherwise wait for resources nobody can add and give up minutes later with a stack trace.
    """
    p, limit = placement, OVERSUBSCRIPTION * max(1, cpus)
    if p.cpus_needed() > limit + 1e-9:
        raise ConfigError(
            f"--num-actors {p.num_actors} x --actor-cpus {p.actor_cpus:g} + --learner-cpus {p.learner_cpus:g} + "
            f"--num-replay-shards {p.num_shards} x {SHARD_CPUS:g} asks {amount(p.cpus_needed(), 'CPU')}, more than "
            f"a local Ray may place on {cpus} cores (at most {OVERSUBSCRIPTION}x oversubscribed: {limit} CPUs); lower "
            "--num-actors or --actor-cpus, or pass --address to run on a cluster")
    if p.gpus_needed() > gpus + 1e-9:
        raise ConfigError(
            f"--learner-gpus {p.learner_gpus:g} + --num-actors {p.num_actors} x --actor-gpus {p.actor_gpus:g} asks "
            f"{amount(p.gpus_needed(), 'GPU')}, but this machine has {amount(gpus, 'GPU')}; lower them, "
            "or pass --address to run on a cluster")


def report_cluster_shortfall(placement: Placement, resources: dict) -> str | None:
    """The line saying what a real cluster lacks now for this placement, or None when it has enough.

    Not an error: Ray keeps the actors pending until the autoscaler adds nodes, so the user is told what
    the run waits for instead of watching it sit silent.
    """
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    wanted_cpus, wanted_gpus = placement.cpus_needed(), placement.gpus_needed()
    if wanted_cpus <= cpus + 1e-9 and wanted_gpus <= gpus + 1e-9:
        return None
    return (f"waiting for the cluster's autoscaler: the run asks {amount(wanted_cpus, 'CPU')} and "
            f"{amount(wanted_gpus, 'GPU')}, the cluster has {amount(cpus, 'CPU')} and {amount(gpus, 'GPU')} now")
