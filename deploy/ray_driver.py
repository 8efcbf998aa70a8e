"""Wiring of the distributed runtime: the driver that starts the run's processes and loops over them.

The driver starts (or joins) Ray, places the coordinator, replay shards, learner, rollout actors and the
evaluation actor (what each asks of the cluster: deploy/placement.py), then loops: a slice of learning,
a poll of every actor's counters (and finished evaluations) into the Prometheus metrics, a progress line,
a checkpoint when due (each shard writes its own files). A dead learner is replaced from the newest
checkpoint (deploy/supervision.py). It stops on --total-updates, --time-limit, SIGINT or SIGTERM, always
after a final checkpoint.
"""

from __future__ import annotations

import os
import time
import uuid

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.evaluation_actor import EvaluationClient, start_evaluation
from actors.rollout_actor import ActorSettings, RolloutActor
from buffers.shard import ReplayShard
from common.storage.checkpoint import Checkpoint, decode_learner_state, load_checkpoint, save_checkpoint
from deploy.cli import TrainCommand
from common.storage.data import GoalSet
from common.errors import CheckpointError, ConfigError, UserError
from common.method.networks import VAgent
from common.storage.messages import load_weights_message
from deploy.progress import LossTracker, ProgressPrinter, Throughput
from deploy.loop import RunSummary, StopSignal, start_state, trajectory_spec
from common.storage.run_state import check_compatible, checkpoint_meta
from evaluation.periodic import EvaluationRequest, TrainingEvaluation, describe
from actors.names import PEER_FAILURES, RunNames
from deploy.coordinator import Coordinator
from deploy.metrics import RunMetrics
from deploy.placement import (Placement, check_local_placement, cluster_address, connect, report_cluster_shortfall,
                              resolve_placement)
from deploy.supervision import LearnerLost, LearnerSupervisor
from learner.actor import LearnerActor, LearnerSettings

SLICE_SECONDS = 1.0  # learning between two polls of the actors
ACTOR_FAILURES = PEER_FAILURES + (ray.exceptions.GetTimeoutError,)  # gone, restarting, or not answering


def run_distributed(command: TrainCommand, goals: GoalSet,
                    evaluation: EvaluationRequest | TrainingEvaluation | None = None) -> RunSummary:
    """Entry point of `--runtime ray`: connect, build, train, save, disconnect."""
    args = command.args
    checkpoint = load_resume(command, goals)  # a bad checkpoint stops the run before Ray starts
    address = cluster_address(args.address)
    if address is None:  # a local Ray is sized to the placement, after refusing one it could never hold
        cores, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        placement = resolve_placement(args, {"CPU": cores, "GPU": gpus})
        check_local_placement(placement, cores, gpus)
        started = connect(None, placement.cpus_needed())
    else:  # a real cluster may still grow: say what the run waits for, and wait
        started = connect(address, 0)
        placement = resolve_placement(args, ray.cluster_resources())
        shortfall = report_cluster_shortfall(placement, ray.cluster_resources())
        if shortfall:
            print(shortfall, flush=True)
    try:
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
                 evaluation: EvaluationRequest | TrainingEvaluation | None = None):
        self.command, self.goals, self.placement = command, goals, placement
        in_actor = isinstance(evaluation, EvaluationRequest)  # else a hook run here (bench/quality.py's probe)
        self.evaluation = None if in_actor else evaluation
        self._eval_agent, self._evaluations = None, []  # results poll() gathered and maybe_evaluate() prints
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
        self.checkpoint_dir = command.run.checkpoint_dir.resolve() if command.run.checkpoint_dir else None
        self.shards = [self._make_shard(i) for i in range(placement.num_shards)]
        self._check_checkpoint_dir()
        self.learner = LearnerSupervisor(lambda state: self._make_learner(images, x1, state), self.checkpoint_dir,
                                         command.args.max_learner_restarts, self._learner_restarted,
                                         checkpoint.learner_bytes if checkpoint is not None else None)
        if checkpoint is not None:
            self._restore_shards(checkpoint)
        self.actors = [self._make_actor(i, x1) for i in range(placement.num_actors)]
        self.evaluator = (start_evaluation(self.names, evaluation, self.config, x1, self.metrics) if in_actor
                          else EvaluationClient())
        learner = ray.get(self.learner.handle.stats.remote())
        self.metrics.learner_baseline(learner["updates"])
        print(f"ray runtime: {placement.num_actors} rollout actors, {placement.num_shards} replay shards, learner on "
              f"{learner['device']}; metrics on :{self.metrics_port}", flush=True)

    def _make_shard(self, index: int):
        cfg = self.config
        return ReplayShard.options(name=self.names.shard(index), scheduling_strategy=self._shard_strategy()).remote(
            cfg.replay, trajectory_spec(cfg, self.goals), cfg.learning.q_batch,
            cfg.acting.goals_per_rollout * cfg.mdp.horizon, self.placement.num_shards, index, self.options.seed,
            str(self.checkpoint_dir) if self.checkpoint_dir else None)

    def _shard_strategy(self):
        """Shards write their own checkpoint files: beside the driver, unless every node mounts --checkpoint-dir."""
        if self.checkpoint_dir is None or self.command.args.shared_checkpoint_dir:
            return "SPREAD"
        return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)

    def _check_checkpoint_dir(self) -> None:
        """Shards write their own checkpoint files: refuse a --checkpoint-dir some shard's node cannot see."""
        if self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        seen = ray.get([s.can_see.remote(str(self.checkpoint_dir)) for s in self.shards])
        if not all(seen):
            raise ConfigError(f"--checkpoint-dir {self.checkpoint_dir} is not visible from the node of replay shard "
                              f"{seen.index(False)}; put it on a filesystem every node mounts, or leave out "
                              "--shared-checkpoint-dir so shards stay on the driver's node")

    def _make_learner(self, images, x1, state: bytes | None):
        p, cfg = self.placement, self.config
        settings = LearnerSettings(device="cuda" if p.learner_gpus > 0 else "cpu", threads=max(1, int(p.learner_cpus)),
                                   publish_every=self.command.args.publish_every, seed=self.options.seed)
        return LearnerActor.options(num_cpus=p.learner_cpus, num_gpus=p.learner_gpus).remote(
            cfg.mdp, cfg.network, cfg.learning, images, x1, self.shards, self.coordinator, settings, state)

    def _make_actor(self, index: int, x1):
        p, cfg = self.placement, self.config
        settings = ActorSettings(device="cuda" if p.actor_gpus > 0 else "cpu", threads=max(1, int(p.actor_cpus)),
                                 seed=self.options.seed)
        return RolloutActor.options(name=self.names.rollout(index), num_cpus=p.actor_cpus, num_gpus=p.actor_gpus,
                                    scheduling_strategy="SPREAD").remote(
            index, cfg.mdp, cfg.network, cfg.acting, x1, self.names, settings)

    def _restore_shards(self, checkpoint: Checkpoint) -> None:
        """Each shard reads its own files of the checkpoint, in parallel; nothing passes through here."""
        folder = str(checkpoint.path.resolve())
        try:
            sizes = ray.get([s.read_checkpoint.remote(folder, files)
                             for s, files in zip(self.shards, checkpoint.replay_shards)])
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
                try:
                    steps = self.learn_slice()
                except LearnerLost:
                    self.release()
                    raise
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
        stats = self.learner.train(SLICE_SECONDS, self.options.total_updates)
        self.metrics.record_learner(stats)
        self.losses.update(stats["losses"])
        self.counters.updates = stats["steps"]
        return stats["steps"]

    def maybe_evaluate(self, steps: int, progress: ProgressPrinter) -> dict | None:
        """Print the evaluations finished since the last call (the evaluation actor's, gathered by poll()); the
        newest, or None. A hook passed instead of an EvaluationRequest (bench/quality.py's probe, which pauses
        learning on purpose and discounts its own time) is still run here when due."""
        if self.evaluation is not None and self.evaluation.due():
            if self._eval_agent is None:
                self._eval_agent = VAgent(self.goals.image_shape, self.config.mdp, self.config.network)
            load_weights_message(self._eval_agent, ray.get(self.learner.handle.weights.remote()))
            result = self.evaluation.run(self._eval_agent.to(self.evaluation.device), self.x1, steps)
            self.metrics.record_evaluation(result, steps)
            self._evaluations.append({**result, "updates": steps})
        finished, self._evaluations = self._evaluations, []
        for result in finished:
            progress.print(self.counters, self.losses, f"{describe(result)} (weights of update {result['updates']})")
        return finished[-1] if finished else None

    def poll(self) -> None:
        """Read every actor's and shard's counters, and finished evaluations, into the metrics; dead ones are
        skipped this round."""
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
        for result in self.evaluator.collect():  # never waits for an evaluation; raises if the actor failed
            self.metrics.record_evaluation(result, result["updates"])
            self._evaluations.append(result)

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
        meta = checkpoint_meta(self.config, self.goals, self.command.preset_name, "ray")
        try:
            learner_bytes = ray.get(self.learner.handle.state_bytes.remote({"counters": counters}), timeout=120)
            return str(save_checkpoint(self.checkpoint_dir, steps, learner_bytes, self._write_replay, meta,
                                       self.options.keep_checkpoints))
        except ACTOR_FAILURES as exc:
            print(f"checkpoint at update {steps} skipped: the learner or a replay shard is restarting "
                  f"({type(exc).__name__})", flush=True)
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None
        return None

    def _write_replay(self, staging) -> dict:
        """Every shard writes its own files into the staging folder, in parallel; their manifest entries."""
        written = ray.get([s.write_checkpoint.remote(str(staging)) for s in self.shards], timeout=600)
        return {name: info for files in written for name, info in files.items()}

    def _learner_restarted(self, stats: dict) -> None:
        """A new learner counts from its checkpoint's updates: re-baseline the metrics and count the restart."""
        self.metrics.learner_restarted(stats["updates"])
        self.counters.restart_updates(stats["steps"])

    def shutdown(self, steps: int) -> str | None:
        """Stop the actors, write the final checkpoint, release every process of this run."""
        ray.get(self.coordinator.stop.remote())
        path = self.save(steps)
        self.release()
        return path

    def release(self) -> None:
        """Kill every process of this run for good (no checkpoint: shutdown() writes one first)."""
        self.evaluator.close()
        for handle in self.actors + self.shards + [self.learner.handle, self.coordinator]:
            ray.kill(handle, no_restart=True)
