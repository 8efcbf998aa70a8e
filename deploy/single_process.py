"""The single-process runtime: Algorithms 1 and 2 with the three replay memories in one process.

It is the correctness reference and the baseline the Ray runtime is measured against, so it is the
honest loop: batched rollouts of many goals at once, the samples-per-insert limiter deciding when to
act and when to learn, and the same Learner, RolloutWorker and ReplayTables (made by the same Builder)
that the Ray runtime wraps. deploy/loop.py's run loop drives it.
"""

from __future__ import annotations

import torch

from buffers.replay_files import read_shard, write_shard
from common.device import resolve_device
from common.errors import CheckpointError
from common.method.config import ExperimentConfig
from common.storage.checkpoint import encode_learner_state, save_checkpoint
from common.storage.data import GoalSet
from common.storage.run_state import checkpoint_meta, rng_state, set_rng_state
from deploy.loop import ResumePoint, RunSummary, load_resume, run_loop
from deploy.progress import LossTracker, Throughput
from deploy.settings import RunOptions
from evaluation.periodic import TrainingEvaluation
from learner.builder import Builder

SHARDS_HINT = " on --runtime ray (the single-process runtime holds exactly 1)"


class SingleProcessTrainer:
    """Acts and learns in turns, as the rate limiter allows, until the update budget or a signal."""

    def __init__(self, config: ExperimentConfig, goals: GoalSet, options: RunOptions, preset_name: str = "custom",
                 evaluation: TrainingEvaluation | None = None):
        self.config, self.goals, self.options, self.preset_name = config, goals, options, preset_name
        self.evaluation = evaluation
        resume = load_resume(options, config, goals, 1, SHARDS_HINT)
        self.device = resolve_device(options.device)
        if options.threads:
            torch.set_num_threads(options.threads)
        builder = Builder.for_goals(config, goals)
        x1 = builder.start_state(goals)
        self.learner = builder.make_learner(builder.make_agent(options.seed), goals.images, x1, self.device)
        self.worker = builder.make_rollout_worker(self.learner.agent, self.learner.goal_images, x1, self.device,
                                                  options.seed + 1)
        self.replay = builder.make_replay_tables(options.seed + 2)
        self.counters, self.losses = Throughput(), LossTracker()
        if resume is not None:
            self.resume(resume)

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

    def advance(self) -> int:
        """One turn of the run loop: learn if the limiter allows it, else act; the learner's step count."""
        if not self.learn():
            self.act()
        return self.learner.counts.steps

    def run(self) -> RunSummary:
        """Train until --total-updates, --time-limit or a signal; always leaves a checkpoint behind."""
        return run_loop(self, self.options)

    def status(self) -> str:
        """Nothing beyond the counters and losses: one process has no actors or shards to report."""
        return ""

    def readings(self) -> dict[str, float | None]:
        """Items in each replay memory; the acting weights are the learner's own, so never stale."""
        return {**{f"replay/{memory}": size for memory, size in self.replay.sizes().items()},
                "weights/staleness": 0.0}

    def evaluations(self) -> list[dict]:
        """The periodic evaluation of the current agent, when due (learning waits: it is one process)."""
        if self.evaluation is None or not self.evaluation.due():
            return []
        return [self.evaluate()]

    def evaluate(self) -> dict:
        """Evaluate the current agent now (see TrainingEvaluation.run; the averaged S-agent when averaging is on),
        labelled with the learner's steps."""
        steps = self.learner.counts.steps
        return {**self.evaluation.run(self.learner.evaluation_agent, self.learner.x1, steps), "updates": steps}

    def stall_reason(self) -> str:
        """No update yet means replay has not reached the size learning starts at."""
        held, needed = self.replay.sizes()["gc_transitions"], self.config.replay.min_size_to_sample
        return (f"replay held {held} of the {needed} GC transitions learning starts at (replay.min_size_to_sample); "
                "give the run more time (--time-limit) or lower that setting")

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

    def finish(self) -> str | None:
        """The final checkpoint (one process: nothing else to release)."""
        return self.save()

    def resume(self, point: ResumePoint) -> None:
        """Continue from a checked checkpoint: learner, counters, random streams and replay."""
        state, path = point.state, point.checkpoint.path
        try:
            self.learner.load_state_dict(state["learner"])
            if "worker" in state["rng"]:  # a Ray checkpoint has none: its actors' streams stay in their processes
                self.worker.set_rng_state(state["rng"]["worker"])
            set_rng_state(state["rng"]["torch"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} does not fit this model: {exc}".splitlines()[0]) from exc
        point.restore_counters(self.counters)
        read_shard(self.replay, path, 0, point.checkpoint.replay_shards[0])
