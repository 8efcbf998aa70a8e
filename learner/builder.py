"""The builder: the one seam between the method and a runtime (as Acme's `make_learner`, `make_actor`,
`make_replay_tables`).

Both runtimes (deploy/single_process.py, deploy/ray_driver.py and the Ray actors it places) and
evaluation make the agent, x_1, the learner, the rollout worker and the replay tables here, from the
settings and the shape of the goals, so a checkpoint of one runtime resumes or evaluates in the other.
A Builder is a small frozen dataclass: the Ray driver hands it to every actor it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actors.worker import RolloutWorker
from buffers.tables import ReplayTables
from common.method.config import ExperimentConfig
from common.method.mdp import initial_state
from common.method.networks import ImageShape, VAgent, check_image_size
from common.storage.data import GoalSet
from common.storage.messages import TrajectorySpec
from learner.learning import Learner

SHARD_SEED_STRIDE = 1000  # replay shard i draws from seed + 1000 i, so shards never share a random stream


@dataclass(frozen=True)
class Builder:
    """Makes every part of a run from one ExperimentConfig and the goals' shape and count."""

    config: ExperimentConfig
    image_shape: ImageShape  # (C, H, W) of the goals
    num_goals: int  # goal indices in replay range over [0, num_goals)

    @classmethod
    def for_goals(cls, config: ExperimentConfig, goals: GoalSet) -> Builder:
        """The builder of a run on these training goals; images the networks cannot take are refused here, in
        the driver, before any process starts."""
        check_image_size(tuple(goals.image_shape), len(config.network.proposal_widths))
        return cls(config, tuple(goals.image_shape), len(goals))

    @property
    def insert_size(self) -> int:
        """GC transitions one rollout batch inserts (B goals x H steps): what the rate limiter counts."""
        return self.config.acting.goals_per_rollout * self.config.mdp.horizon

    def trajectory_spec(self) -> TrajectorySpec:
        """What replay accepts from actors in this run."""
        mdp = self.config.mdp
        return TrajectorySpec(self.image_shape, mdp.horizon, mdp.num_proposals, self.num_goals)

    def start_state(self, goals: GoalSet) -> torch.Tensor:
        """x_1 [C, H, W]: zeros or the mean training image, as mdp.initial_state says."""
        mean = goals.mean_image() if self.config.mdp.initial_state == "data_mean" else None
        return initial_state(self.config.mdp, self.image_shape, mean)

    def make_agent(self, seed: int | None = None, device: torch.device | str = "cpu") -> VAgent:
        """The three networks of Appendix B; seeded (every runtime then starts from the same weights) or, for
        a copy whose weights are loaded next (rollout actors, evaluation), left to torch's stream."""
        if seed is not None:
            torch.manual_seed(seed)
        value = self.config.acting.behaviour == "afterstate"  # the afterstate agent's value network
        return VAgent(self.image_shape, self.config.mdp, self.config.network, value).to(device)

    def make_learner(self, agent: VAgent, goal_images: torch.Tensor, x1: torch.Tensor,
                     device: torch.device) -> Learner:
        """Algorithm 2's learner over `agent`; goal_images [N, C, H, W] uint8, x1 [C, H, W]. GC-select-Qnet is
        trained unless the afterstate agent acts alone (then its value network is the GC-agent that learns)."""
        acting = self.config.acting
        train_q = acting.behaviour != "afterstate" or acting.q_fraction > 0 or self.config.learning.demo_margin > 0
        return Learner(agent, self.config.mdp, self.config.learning, goal_images, x1, device, train_q)

    def make_rollout_worker(self, agent: VAgent, goal_images: torch.Tensor | np.ndarray, x1: torch.Tensor,
                            device: torch.device, seed: int) -> RolloutWorker:
        """Algorithm 1's acting over `agent` (the learner's own, or a private copy refreshed from weights)."""
        return RolloutWorker(agent, self.config.mdp, self.config.acting, goal_images, x1, device, seed)

    def make_replay_tables(self, seed: int, num_shards: int = 1, index: int = 0) -> ReplayTables:
        """Replay shard `index` of `num_shards` (each holds 1/S of every capacity); one process uses 1 of 1."""
        return ReplayTables(self.config.replay, self.trajectory_spec(), self.config.learning.q_batch,
                            self.insert_size, num_shards, seed + SHARD_SEED_STRIDE * index)
