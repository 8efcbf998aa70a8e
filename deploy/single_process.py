"""The single-process reference trainer: Algorithms 1 and 2 with the three replay memories in one process.

It is the correctness reference and the baseline the Ray runtime is measured against, so it is the
honest loop: batched rollouts of many goals at once, the samples-per-insert limiter deciding when to
act and when to learn, and the same Learner, RolloutWorker and ReplayTables the Ray runtime wraps.
"""

from __future__ import annotations

import time

import torch

from actors.worker import RolloutWorker
from buffers.replay_files import read_shard, write_shard
from buffers.tables import ReplayTables
from common.storage.checkpoint import encode_learner_state, load_checkpoint, save_checkpoint
from common.method.config import ExperimentConfig
from common.storage.data import GoalSet
from common.device import resolve_device
from common.errors import CheckpointError
from deploy.progress import LossTracker, ProgressPrinter, Throughput
from deploy.loop import RunOptions, RunSummary, StopSignal, build_agent, start_state, trajectory_spec
from common.storage.run_state import checkpoint_meta, check_compatible, rng_state, set_rng_state
from evaluation.periodic import TrainingEvaluation, describe
from learner.learning import Learner


class SingleProcessTrainer:
    """Acts and learns in turns, as the rate limiter allows, until the update budget or a signal."""

    def __init__(self, config: ExperimentConfig, goals: GoalSet, options: RunOptions, preset_name: str = "custom",
                 evaluation: TrainingEvaluation | None = None):
        self.config, self.goals, self.options, self.preset_name = config, goals, options, preset_name
        self.evaluation = evaluation
        self.device = resolve_device(options.device)
        if options.threads:
            torch.set_num_threads(options.threads)
        x1 = start_state(config, goals)
        agent = build_agent(config, goals.image_shape, options.seed)
        self.learner = Learner(agent, config.mdp, config.learning, goals.images, x1, self.device)
        self.worker = RolloutWorker(self.learner.agent, config.mdp, config.acting, self.learner.goal_images,
                                    x1, self.device, options.seed + 1)
        insert_size = config.acting.goals_per_rollout * config.mdp.horizon
        self.replay = ReplayTables(config.replay, trajectory_spec(config, goals), config.learning.q_batch,
                                   insert_size, seed=options.seed + 2)
        self.counters = Throughput()
        self.losses = LossTracker()
        if options.resume:
            self.resume()

    def act(self) -> None:
        """Algorithm 1 for one batch of goals, into the three memories."""
        batch = self.worker.collect()
        self.replay.insert(batch)
        self.counters.env_steps += len(batch) * self.config.mdp.horizon
        self.counters.trajectories += len(batch)

    def learn(self) -> bool:
        """One learner step if the limiter allows it; False when more acting is needed first."""
        request = self.learner.next_request()
        if not self.replay.can_sample(request):
            return False
        self.losses.update(self.learner.step(self.replay.sample(request)))
        self.counters.updates = self.learner.counts.steps
        return True

    def run(self) -> RunSummary:
        """Train until --total-updates, --time-limit or a signal; always leaves a checkpoint behind."""
        opts = self.options
        started = time.monotonic()
        progress = ProgressPrinter(opts.total_updates, opts.progress_every)
        next_save = started + opts.checkpoint_every
        with StopSignal() as stop:
            reason = "total-updates"
            while self.learner.counts.steps < opts.total_updates:
                if stop or (opts.time_limit and time.monotonic() - started >= opts.time_limit):
                    reason = stop.received or "time-limit"
                    break
                if not self.learn():
                    self.act()
                progress.maybe_print(self.counters, self.losses)
                self.maybe_evaluate(progress)
                if time.monotonic() >= next_save:
                    self.save()
                    next_save = time.monotonic() + opts.checkpoint_every
            progress.print(self.counters, self.losses, f"stopped by {reason}")
            path = self.save()
        return RunSummary(self.learner.counts.steps, self.counters.env_steps, self.counters.trajectories,
                          time.monotonic() - started, dict(self.losses.values), reason, path)

    def maybe_evaluate(self, progress: ProgressPrinter) -> dict | None:
        """The periodic evaluation of the current agent, when due; its figures go on a progress line."""
        if self.evaluation is None or not self.evaluation.due():
            return None
        result = self.evaluation.run(self.learner.agent, self.learner.x1, self.learner.counts.steps)
        progress.print(self.counters, self.losses, describe(result))
        return result

    def state(self) -> dict:
        """Learner, x_1, counters and every random stream: what `save` writes beside the replay."""
        return {"learner": self.learner.state_dict(), "x1": self.learner.x1.cpu(),
                "counters": {"env_steps": self.counters.env_steps, "trajectories": self.counters.trajectories},
                "rng": {"torch": rng_state(), "worker": self.worker.rng_state()}}

    def save(self) -> str | None:
        """Write a checkpoint if a directory was given; returns its path."""
        if self.options.checkpoint_dir is None:
            return None
        meta = checkpoint_meta(self.config, self.goals, self.preset_name, "single-process")
        path = save_checkpoint(self.options.checkpoint_dir, self.learner.counts.steps, encode_learner_state(self.state()),
                               lambda staging: write_shard(self.replay, staging, 0), meta, self.options.keep_checkpoints)
        return str(path)

    def resume(self) -> None:
        """Continue from the newest complete checkpoint in --checkpoint-dir."""
        checkpoint = load_checkpoint(self.options.checkpoint_dir)
        check_compatible(checkpoint.manifest, self.config, self.goals)
        if len(checkpoint.replay_shards) != 1:
            raise CheckpointError(f"{checkpoint.path} holds {len(checkpoint.replay_shards)} replay shards; "
                                  "the single-process runtime resumes from exactly 1")
        state = checkpoint.learner_state()
        try:
            self.learner.load_state_dict(state["learner"])
            self.counters.env_steps = int(state["counters"]["env_steps"])
            self.counters.trajectories = int(state["counters"]["trajectories"])
            if "worker" in state["rng"]:  # a Ray checkpoint has none: its actors' streams stay in their processes
                self.worker.set_rng_state(state["rng"]["worker"])
            set_rng_state(state["rng"]["torch"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{checkpoint.path} does not fit this model: {exc}".splitlines()[0]) from exc
        read_shard(self.replay, checkpoint.path, 0, checkpoint.replay_shards[0])
        self.counters.updates = self.learner.counts.steps
        print(f"resumed from {checkpoint.path} at update {self.learner.counts.steps}", flush=True)
