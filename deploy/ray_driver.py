"""The Ray runtime's driver: starts the run's processes and drives them through deploy/loop.py's run loop.

The driver starts (or joins) Ray, places the coordinator, replay shards, learner, rollout actors and the
evaluation actor (what each asks of the cluster: deploy/placement.py), each made by the same Builder as
the single-process runtime's parts. One turn of the run loop is a slice of learning and a poll of every
actor's counters (and finished evaluations) into the Prometheus metrics; checkpoints are written by the
learner and each shard (its own files). A dead learner is replaced from the newest checkpoint
(deploy/supervision.py).
"""

from __future__ import annotations

import os
import uuid

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.evaluation_actor import EvaluationClient, start_evaluation
from actors.names import PEER_FAILURES, RunNames
from actors.rollout_actor import ActorSettings, RolloutActor
from buffers.shard import SHARD_CPUS, ReplayShard
from common.errors import ConfigError, UserError
from common.storage.checkpoint import save_checkpoint
from common.storage.data import GoalSet
from common.storage.messages import load_weights_message
from common.storage.run_state import checkpoint_meta
from deploy.coordinator import Coordinator
from deploy.loop import ResumePoint, RunSummary, load_resume, run_loop
from deploy.metrics import RunMetrics
from deploy.pending import Ask, PlacementWatch, layout_line
from deploy.placement import (Placement, check_local_placement, cluster_address, connect, report_cluster_shortfall,
                              resolve_placement)
from deploy.progress import LossTracker, Throughput
from deploy.settings import TrainCommand
from deploy.supervision import LearnerLost, LearnerSupervisor
from evaluation.periodic import EvaluationRequest, TrainingEvaluation
from learner.actor import LearnerActor, LearnerSettings
from learner.builder import Builder

SLICE_SECONDS = 1.0  # learning between two polls of the actors
ACTOR_FAILURES = PEER_FAILURES + (ray.exceptions.GetTimeoutError,)  # gone, restarting, or not answering


def run_distributed(command: TrainCommand, goals: GoalSet,
                    evaluation: EvaluationRequest | TrainingEvaluation | None = None) -> RunSummary:
    """Entry point of `--runtime ray`: connect, build, train, save, disconnect."""
    settings = command.ray
    resume = load_resume(command.run, command.config, goals, settings.num_replay_shards)  # before Ray starts
    address = cluster_address(settings.address)
    evaluating = command.evaluation.every > 0
    if address is None:  # a local Ray is sized to the placement, after refusing one it could never hold
        cores, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        placement = resolve_placement(settings, {"CPU": cores, "GPU": gpus}, evaluating)
        check_local_placement(placement, cores, gpus)
        started = connect(None, placement.cpus_needed())
    else:  # a real cluster may still grow: say what the run waits for, and wait
        started = connect(address, 0)
        placement = resolve_placement(settings, ray.cluster_resources(), evaluating)
        shortfall = report_cluster_shortfall(placement, ray.cluster_resources())
        if shortfall:
            print(shortfall, flush=True)
    try:
        return DistributedRun(command, goals, placement, resume, evaluation).train()
    finally:
        if started:
            ray.shutdown()


def unwrap(exc: Exception) -> Exception:
    """The user-facing error inside a Ray task error, so it prints as one line."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc


class DistributedRun:
    """One training run on Ray: its actors, metrics and counters; a Runtime of deploy/loop.py's run loop."""

    def __init__(self, command: TrainCommand, goals: GoalSet, placement: Placement, resume: ResumePoint | None = None,
                 evaluation: EvaluationRequest | TrainingEvaluation | None = None):
        self.command, self.goals, self.placement = command, goals, placement
        self.config, self.options, self.settings = command.config, command.run, command.ray
        self.builder = Builder.for_goals(self.config, goals)
        in_actor = isinstance(evaluation, EvaluationRequest)  # else a hook run here (bench/quality.py's probe)
        self.evaluation = None if in_actor else evaluation
        self._eval_agent, self._evaluations = None, []  # results poll() gathered and evaluations() hands over
        self.evaluated: list[dict] = []  # every evaluation handed over so far, oldest first
        self.metrics, self.losses, self.counters = RunMetrics(), LossTracker(), Throughput()
        port = self.settings.metrics_port
        self.metrics_port = self.metrics.serve(port) if port >= 0 else None
        if resume is not None:
            resume.restore_counters(self.counters)
        self.names = RunNames(uuid.uuid4().hex[:8], placement.num_shards)
        images = ray.put(goals.images.numpy())
        self.coordinator = Coordinator.options(name=self.names.coordinator).remote([images])
        self.x1 = self.builder.start_state(goals)
        self.checkpoint_dir = self.options.checkpoint_dir.resolve() if self.options.checkpoint_dir else None
        self.watch, self.nodes, self.layout, self.learner_info = PlacementWatch(), {}, [], None  # layout: last printed
        self.shards = [self._make_shard(i) for i in range(placement.num_shards)]
        self._await_placed("replay")
        self._check_checkpoint_dir()
        self.learner = LearnerSupervisor(lambda state: self._make_learner(images, state), self.checkpoint_dir,
                                         self.settings.max_learner_restarts, self._learner_restarted,
                                         resume.checkpoint.learner_bytes if resume is not None else None)
        if resume is not None:
            self._restore_shards(resume)
        self.actors = [self._make_actor(i) for i in range(placement.num_actors)]
        self.evaluator = (start_evaluation(self.names, evaluation, self.config, self.x1.numpy(), self.metrics)
                          if in_actor else EvaluationClient())
        if self.evaluator.actor is not None:
            self.watch.track("evaluation", 0, self.evaluator.actor, Ask(placement.eval_cpus, placement.eval_gpus))
        print(f"ray runtime: {placement.num_actors} rollout actors, {placement.num_shards} replay shards, a learner; "
              f"metrics on :{self.metrics_port}", flush=True)

    def _make_shard(self, index: int):
        shard = ReplayShard.options(name=self.names.shard(index), scheduling_strategy=self._shard_strategy()).remote(
            self.builder, self.placement.num_shards, index, self.options.seed,
            str(self.checkpoint_dir) if self.checkpoint_dir else None)
        self.watch.track("replay", index, shard, Ask(SHARD_CPUS))
        return shard

    def _await_placed(self, role: str) -> None:
        """Wait until every process of `role` is placed, saying what it waits for every --progress-every seconds."""
        while True:
            self.watch.refresh(timeout=self.options.progress_every)
            if role not in self.watch.unplaced():
                return
            print(self.watch.waiting_line(), flush=True)

    def _learner_started(self) -> bool:
        """Whether the learner is placed; the first time it is, take its counters and say where it runs."""
        if self.learner_info is None:
            self.watch.refresh(timeout=SLICE_SECONDS)
            if not self.watch.is_placed("learner"):
                return False
            self.learner_info = ray.get(self.learner.handle.stats.remote())
            self.metrics.learner_baseline(self.learner_info["updates"])
            self.nodes[("learner", 0)] = self.learner_info["node"]
            print(f"learner started on {self.learner_info['device']}", flush=True)
        return True

    def _shard_strategy(self):
        """Shards write their own checkpoint files: beside the driver, unless every node mounts --checkpoint-dir."""
        if self.checkpoint_dir is None or self.settings.shared_checkpoint_dir:
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

    def _make_learner(self, images, state: bytes | None):
        p = self.placement
        settings = LearnerSettings(gpus=p.learner_gpus, threads=max(1, int(p.learner_cpus)),
                                   publish_every=self.settings.publish_every, seed=self.options.seed)
        learner = LearnerActor.options(num_cpus=p.learner_cpus, num_gpus=p.learner_gpus).remote(
            self.builder, images, self.x1.numpy(), self.shards, self.coordinator, settings, state)
        self.watch.track("learner", 0, learner, Ask(p.learner_cpus, p.learner_gpus))
        return learner

    def _make_actor(self, index: int):
        p = self.placement
        settings = ActorSettings(gpus=p.actor_gpus, threads=max(1, int(p.actor_cpus)),
                                 seed=self.options.seed)
        actor = RolloutActor.options(name=self.names.rollout(index), num_cpus=p.actor_cpus, num_gpus=p.actor_gpus,
                                     scheduling_strategy="SPREAD").remote(
            index, self.builder, self.x1.numpy(), self.names, settings)
        self.watch.track("rollout", index, actor, Ask(p.actor_cpus, p.actor_gpus))
        return actor

    def _restore_shards(self, resume: ResumePoint) -> None:
        """Each shard reads its own files of the checkpoint, in parallel; nothing passes through here."""
        folder = str(resume.checkpoint.path.resolve())
        try:
            sizes = ray.get([s.read_checkpoint.remote(folder, files)
                             for s, files in zip(self.shards, resume.checkpoint.replay_shards)])
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None
        print("replay restored: " + "; ".join(f"shard {i} {sz}" for i, sz in enumerate(sizes)), flush=True)

    def train(self) -> RunSummary:
        """The run loop over this runtime; every exit path writes a final checkpoint."""
        return run_loop(self, self.options)

    def advance(self) -> int:
        """One turn of the run loop: a slice of learning, then a poll of every actor; the learner's steps."""
        try:
            steps = self.learn_slice()
        except LearnerLost:
            self.release()
            raise
        self.poll()
        return steps

    def learn_slice(self) -> int:
        """About a second of learner steps (or of waiting for the learner to be placed: the run loop may stop or
        report meanwhile); returns the learner's total step count."""
        if not self._learner_started():
            return self.counters.updates
        stats = self.learner.train(SLICE_SECONDS, self.options.total_updates)
        self.metrics.record_learner(stats)
        self.losses.update(stats["losses"])
        self.counters.updates = stats["steps"]
        return stats["steps"]

    def evaluations(self) -> list[dict]:
        """The evaluations finished since the last call, each labelled with the update of the weights it read."""
        finished = self._collect_evaluations()
        self.evaluated += finished
        return finished

    def readings(self) -> dict[str, float | None]:
        """Replay sizes, weight staleness and version, restarts and acting actors, for the logged curves."""
        return {**self.metrics.readings(), "ray/learner_restarts": self.learner.restarts}

    def _collect_evaluations(self) -> list[dict]:
        """The evaluations finished since the last call (the evaluation actor's, gathered by poll()). A hook passed
        instead of an EvaluationRequest (bench/quality.py's probe, which pauses learning on purpose and
        discounts its own time) is run here when due."""
        if self.evaluation is not None and self.evaluation.due():
            if self._eval_agent is None:
                self._eval_agent = self.builder.make_agent(device=self.evaluation.device)
            load_weights_message(self._eval_agent, ray.get(self.learner.handle.weights.remote()))
            steps = self.counters.updates
            result = self.evaluation.run(self._eval_agent, self.x1, steps)
            self.metrics.record_evaluation(result, steps)
            self._evaluations.append({**result, "updates": steps})
        finished, self._evaluations = self._evaluations, []
        return finished

    def poll(self) -> None:
        """Read every actor's and shard's counters, and finished evaluations, into the metrics; dead ones are
        skipped this round."""
        before = self.metrics.env_steps_total, self.metrics.trajectories_total
        self.watch.refresh()
        acting = 0
        placed = [a for i, a in enumerate(self.actors) if self.watch.is_placed("rollout", i)]  # others never answer
        for stats in self._gather([a.stats.remote() for a in placed]):
            if stats["error"]:
                raise RuntimeError(f"rollout actor {stats['index']} failed:\n{stats['error']}")
            self.metrics.record_rollout(stats)
            self.nodes[("rollout", stats["index"])] = stats["node"]
            acting += stats["env_steps"] > 0
        self.metrics.actors_acting = acting
        for stats in self._gather([s.stats.remote() for s in self.shards]):
            self.metrics.record_shard(stats)
            self.nodes[("replay", stats["index"])] = stats["node"]
        self._report_layout()
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

    def _report_layout(self) -> None:
        """Print where every process runs once all are placed, and again whenever that changes (restarts)."""
        expected = self.placement.num_actors + self.placement.num_shards + 1
        layout = sorted(self.nodes.items())
        if not self.watch.complete() or len(layout) < expected or layout == self.layout:
            return
        self.layout = layout
        print(layout_line(self.nodes), flush=True)

    def status(self) -> str:
        """Actors acting, episodes in replay and the newest weights version, for progress lines; while processes
        are pending, how many of each role are placed and what the cluster lacks."""
        text = (f"actors acting {self.metrics.actors_acting}/{self.placement.num_actors} | "
                f"replay {sum(self.metrics.gc_fill.values())} | weights v{self.metrics.latest_version}")
        return text if self.watch.complete() else f"{text} | {self.watch.waiting_line()}"

    def stall_reason(self) -> str:
        """Why no learner update was made: a process never placed, or replay short of the size learning starts at."""
        self.watch.refresh()
        pending = self.watch.unplaced()
        if "learner" in pending or "replay" in pending or pending.get("rollout", 0) == self.placement.num_actors:
            free, total = ray.available_resources(), ray.cluster_resources()
            advice = "; lower --num-actors or the CPUs and GPUs each process asks, or add nodes" if self.watch.lacking(
                total) else ""
            return f"not every process it needs started: {self.watch.describe(free, total)}{advice}"
        held, needed = sum(self.metrics.gc_fill.values()), self.config.replay.min_size_to_sample
        return (f"replay held {held} of the {needed} GC transitions learning starts at (replay.min_size_to_sample), "
                f"from {self.metrics.actors_acting} of {self.placement.num_actors} rollout actors; give the run more "
                "time (--time-limit)")

    def save(self) -> str | None:
        """A checkpoint of the learner and every shard; skipped (with a line) if a shard is down."""
        if self.options.checkpoint_dir is None or not self._learner_started():  # no learner yet: nothing to save
            return None
        steps = self.counters.updates
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
        self.nodes[("learner", 0)] = stats["node"]

    def finish(self) -> str | None:
        """Stop the actors, write the final checkpoint, release every process of this run."""
        ray.get(self.coordinator.stop.remote())
        path = self.save()
        self.release()
        return path

    def release(self) -> None:
        """Kill every process of this run for good (no checkpoint: finish() writes one first)."""
        self.evaluator.close()
        for handle in self.actors + self.shards + [self.learner.handle, self.coordinator]:
            ray.kill(handle, no_restart=True)
