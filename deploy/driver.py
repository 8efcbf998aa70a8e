"""Placement and wiring of the distributed runtime: the only module that decides where processes run.

The driver starts (or joins) Ray, places the coordinator, replay shards, learner and rollout actors,
then loops: a slice of learning, a poll of every actor's counters into the Prometheus metrics, a
progress line, a checkpoint when due. It stops on --total-updates, --time-limit, SIGINT or SIGTERM,
always after a final checkpoint.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from actors.rollout_actor import ActorSettings, RolloutActor
from buffers.shard import ReplayShard
from common.checkpoint import Checkpoint, decode_learner_state, load_checkpoint, save_checkpoint
from common.cli import TrainCommand
from common.config import check_non_negative, check_positive, check_positive_int
from common.data import GoalSet
from common.errors import CheckpointError, ConfigError, UserError
from common.networks import VAgent, load_weights_message
from common.progress import LossTracker, ProgressPrinter, Throughput
from common.run import RunSummary, StopSignal, start_state, trajectory_spec
from common.state import check_compatible, checkpoint_meta
from common.training_eval import TrainingEvaluation, describe
from deploy.coordinator import NAMESPACE, Coordinator, RunNames
from deploy.metrics import RunMetrics
from learner.actor import LearnerActor, LearnerSettings

SLICE_SECONDS = 1.0  # learning between two polls of the actors
RAY_START_RECORD = Path("/tmp/ray/ray_current_cluster")  # written by `ray start`, removed by `ray stop`
ACTOR_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError)


@dataclass(frozen=True)
class Placement:
    """How many of each process and what each asks of the cluster."""

    num_actors: int
    num_shards: int
    actor_cpus: float
    actor_gpus: float
    learner_cpus: float
    learner_gpus: float

    def __post_init__(self):
        check_positive_int("--num-actors", self.num_actors)
        check_positive_int("--num-replay-shards", self.num_shards)
        check_positive("--actor-cpus", self.actor_cpus)
        check_positive("--learner-cpus", self.learner_cpus)
        check_non_negative("--actor-gpus", self.actor_gpus)
        check_non_negative("--learner-gpus", self.learner_gpus)

    def cpus_needed(self) -> float:
        """Logical CPUs the run asks of the cluster (a local Ray is started with at least this many)."""
        return self.num_actors * self.actor_cpus + self.learner_cpus + self.num_shards * 0.25


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


def resolve_placement(args, cluster: dict) -> Placement:
    """Fill defaults from the cluster: actors fill the CPUs left, the learner takes a GPU if any."""
    learner_gpus = args.learner_gpus if args.learner_gpus is not None else (1.0 if cluster.get("GPU", 0) >= 1 else 0.0)
    if learner_gpus > cluster.get("GPU", 0):
        raise ConfigError(f"--learner-gpus {learner_gpus} but the cluster has {cluster.get('GPU', 0)} GPUs")
    actors = args.num_actors or max(1, int(cluster.get("CPU", 1) - args.learner_cpus - 0.25 * args.num_replay_shards))
    return Placement(actors, args.num_replay_shards, args.actor_cpus, args.actor_gpus, args.learner_cpus, learner_gpus)


def run_distributed(command: TrainCommand, goals: GoalSet, evaluation: TrainingEvaluation | None = None) -> RunSummary:
    """Entry point of `--runtime ray`: connect, build, train, save, disconnect."""
    args = command.args
    checkpoint = load_resume(command, goals)  # a bad checkpoint stops the run before Ray starts
    address = cluster_address(args.address)
    if address is None:  # a local Ray is sized to the placement, so nothing waits for a CPU it cannot get
        local = {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
        planned = resolve_placement(args, local)
        started = connect(None, planned.cpus_needed())
    else:
        started = connect(address, 0)
    try:
        placement = resolve_placement(args, ray.cluster_resources())
        run = DistributedRun(command, goals, placement, checkpoint, evaluation)
        return run.train()
    finally:
        if started:
            ray.shutdown()


def load_resume(command: TrainCommand, goals: GoalSet) -> Checkpoint | None:
    """The checkpoint --resume continues from, checked against this run's settings, data and shards."""
    if not command.run.resume:
        return None
    checkpoint = load_checkpoint(command.run.checkpoint_dir)
    check_compatible(checkpoint.manifest, command.config, goals)
    if len(checkpoint.replay_shards) != command.args.num_replay_shards:
        raise CheckpointError(f"{checkpoint.path} holds {len(checkpoint.replay_shards)} replay shards; resume "
                              f"with --num-replay-shards {len(checkpoint.replay_shards)}")
    decode_learner_state(checkpoint.learner_bytes, checkpoint.path)  # refuse a damaged state before Ray starts
    print(f"resuming from {checkpoint.path} at update {checkpoint.manifest['updates']}", flush=True)
    return checkpoint


def unwrap(exc: Exception) -> Exception:
    """The user-facing error inside a Ray task error, so it prints as one line."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc


class DistributedRun:
    """One training run on Ray: its actors, metrics and counters."""

    def __init__(self, command: TrainCommand, goals: GoalSet, placement: Placement, checkpoint: Checkpoint | None = None,
                 evaluation: TrainingEvaluation | None = None):
        self.command, self.goals, self.placement, self.evaluation = command, goals, placement, evaluation
        self._eval_agent = None
        self.config, self.options = command.config, command.run
        self.metrics, self.losses, self.counters = RunMetrics(), LossTracker(), Throughput()
        self.metrics_port = self.metrics.serve(command.args.metrics_port) if command.args.metrics_port >= 0 else None
        if checkpoint is not None:
            counters = decode_learner_state(checkpoint.learner_bytes, checkpoint.path).get("counters", {})
            self.counters.env_steps = int(counters.get("env_steps", 0))
            self.counters.trajectories = int(counters.get("trajectories", 0))
        self.names = RunNames(uuid.uuid4().hex[:8], placement.num_shards)
        images = ray.put(goals.images.numpy())
        self.coordinator = Coordinator.options(name=self.names.coordinator).remote([images])
        self.x1 = start_state(self.config, goals)
        x1 = self.x1.numpy()
        self.shards = [self._make_shard(i) for i in range(placement.num_shards)]
        self.learner = self._make_learner(images, x1, checkpoint)
        if checkpoint is not None:
            self._restore_shards(checkpoint.replay_shards)
        self.actors = [self._make_actor(i, x1) for i in range(placement.num_actors)]
        learner = ray.get(self.learner.stats.remote())
        self.metrics.learner_baseline(learner["updates"])
        print(f"ray runtime: {placement.num_actors} rollout actors, {placement.num_shards} replay shards, learner on "
              f"{learner['device']}; metrics on :{self.metrics_port}", flush=True)

    def _make_shard(self, index: int):
        cfg = self.config
        return ReplayShard.options(name=self.names.shard(index), scheduling_strategy="SPREAD").remote(
            cfg.replay, trajectory_spec(cfg, self.goals), cfg.learning.q_batch,
            cfg.acting.goals_per_rollout * cfg.mdp.horizon, self.placement.num_shards, index, self.options.seed)

    def _make_learner(self, images, x1, checkpoint):
        p, cfg = self.placement, self.config
        settings = LearnerSettings(device="cuda" if p.learner_gpus > 0 else "cpu", threads=max(1, int(p.learner_cpus)),
                                   publish_every=self.command.args.publish_every, seed=self.options.seed)
        state = checkpoint.learner_bytes if checkpoint is not None else None
        return LearnerActor.options(num_cpus=p.learner_cpus, num_gpus=p.learner_gpus).remote(
            cfg.mdp, cfg.network, cfg.learning, images, x1, self.shards, self.coordinator, settings, state)

    def _make_actor(self, index: int, x1):
        p, cfg = self.placement, self.config
        settings = ActorSettings(device="cuda" if p.actor_gpus > 0 else "cpu", threads=max(1, int(p.actor_cpus)),
                                 seed=self.options.seed)
        return RolloutActor.options(name=self.names.rollout(index), num_cpus=p.actor_cpus, num_gpus=p.actor_gpus,
                                    scheduling_strategy="SPREAD").remote(
            index, cfg.mdp, cfg.network, cfg.acting, x1, self.names, settings)

    def _restore_shards(self, payloads: list[bytes]) -> None:
        try:
            sizes = ray.get([s.restore.remote(p) for s, p in zip(self.shards, payloads)])
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None
        print("replay restored: " + "; ".join(f"shard {i} {sz}" for i, sz in enumerate(sizes)), flush=True)

    def train(self) -> RunSummary:
        """The driver loop; every exit path writes a final checkpoint."""
        opts, started = self.options, time.monotonic()
        progress = ProgressPrinter(opts.total_updates, opts.progress_every)
        next_save, steps, reason = started + opts.checkpoint_every, 0, "total-updates"
        with StopSignal() as stop:
            while True:
                steps = self.learn_slice()
                self.poll()
                if steps >= opts.total_updates or stop or (opts.time_limit and time.monotonic() - started >= opts.time_limit):
                    reason = "total-updates" if steps >= opts.total_updates else (stop.received or "time-limit")
                    break
                progress.maybe_print(self.counters, self.losses, self._status())
                self.maybe_evaluate(steps, progress)
                if time.monotonic() >= next_save:
                    self.save(steps)
                    next_save = time.monotonic() + opts.checkpoint_every
            progress.print(self.counters, self.losses, f"{self._status()} | stopped by {reason}")
            path = self.shutdown(steps)
        return RunSummary(steps, self.counters.env_steps, self.counters.trajectories, time.monotonic() - started,
                          dict(self.losses.values), reason, path)

    def learn_slice(self) -> int:
        """About a second of learner steps; returns the learner's total step count."""
        stats = ray.get(self.learner.train.remote(SLICE_SECONDS, self.options.total_updates))
        self.metrics.record_learner(stats)
        self.losses.update(stats["losses"])
        self.counters.updates = stats["steps"]
        return stats["steps"]

    def maybe_evaluate(self, steps: int, progress: ProgressPrinter) -> dict | None:
        """When due, evaluate the learner's newest weights here; figures to gauges, progress and run folder."""
        if self.evaluation is None or not self.evaluation.due():
            return None
        if self._eval_agent is None:
            self._eval_agent = VAgent(self.goals.image_shape, self.config.mdp, self.config.network)
        load_weights_message(self._eval_agent, ray.get(self.learner.weights.remote()))
        result = self.evaluation.run(self._eval_agent.to(self.evaluation.device), self.x1, steps)
        self.metrics.record_evaluation(result, steps)
        progress.print(self.counters, self.losses, describe(result))
        return result

    def poll(self) -> None:
        """Read every actor's and shard's counters into the metrics; dead ones are skipped this round."""
        before = self.metrics.env_steps_total, self.metrics.trajectories_total
        acting = 0
        for stats in self._gather([a.stats.remote() for a in self.actors]):
            if stats["error"]:
                raise RuntimeError(f"rollout actor {stats['index']} failed:\n{stats['error']}")
            self.metrics.record_rollout(stats)
            acting += stats["env_steps"] > 0
        self.metrics.actors_acting = acting
        for stats in self._gather([s.stats.remote() for s in self.shards]):
            self.metrics.record_shard(stats)
        self.counters.env_steps += self.metrics.env_steps_total - before[0]
        self.counters.trajectories += self.metrics.trajectories_total - before[1]

    @staticmethod
    def _gather(refs: list, timeout: float = 2.0) -> list:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        results = []
        for ref in ready:
            try:
                results.append(ray.get(ref))
            except ACTOR_FAILURES:
                continue
        return results

    def _status(self) -> str:
        return (f"actors acting {self.metrics.actors_acting}/{self.placement.num_actors} | "
                f"replay {sum(self.metrics.gc_fill.values())} | weights v{self.metrics.latest_version}")

    def save(self, steps: int) -> str | None:
        """A checkpoint of the learner and every shard; skipped (with a line) if a shard is down."""
        if self.options.checkpoint_dir is None:
            return None
        counters = {"env_steps": self.counters.env_steps, "trajectories": self.counters.trajectories}
        try:
            learner_bytes = ray.get(self.learner.state_bytes.remote({"counters": counters}))
            shards = ray.get([s.save.remote() for s in self.shards], timeout=120)
        except ACTOR_FAILURES as exc:
            print(f"checkpoint at update {steps} skipped: a replay shard is restarting ({type(exc).__name__})", flush=True)
            return None
        meta = checkpoint_meta(self.config, self.goals, self.command.preset_name, "ray")
        return str(save_checkpoint(self.options.checkpoint_dir, steps, learner_bytes, shards, meta,
                                   self.options.keep_checkpoints))

    def shutdown(self, steps: int) -> str | None:
        """Stop the actors, write the final checkpoint, release every process of this run."""
        ray.get(self.coordinator.stop.remote())
        path = self.save(steps)
        for handle in self.actors + self.shards + [self.learner, self.coordinator]:
            ray.kill(handle, no_restart=True)
        return path
