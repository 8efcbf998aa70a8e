"""The acting side of Algorithm 1 as a plain class: pick goals, roll out the GC-agent, package the result.

The single-process trainer calls it with the learner's own networks; a Ray rollout actor wraps it
with a private copy of the networks that it refreshes from published weights.
"""

from __future__ import annotations

import numpy as np
import torch

from common.device import resolve_bf16
from common.method.config import ActingConfig, MDPConfig
from common.method.mdp import step_rates
from common.storage.messages import TrajectoryBatch
from common.method.networks import VAgent
from common.storage.messages import load_weights_message
from common.method.pixels import to_unit_range
from common.method.lookahead import gc_agent_rollout
from common.storage.run_state import numpy_rng_from_text, numpy_rng_to_text


class RolloutWorker:
    """Generates GC-agent episodes for goals drawn uniformly from the training set (line 1)."""

    def __init__(self, agent: VAgent, mdp: MDPConfig, acting: ActingConfig, goal_images: torch.Tensor,
                 x1: torch.Tensor, device: torch.device, seed: int):
        self.agent, self.mdp, self.acting, self.device = agent, mdp, acting, device
        self.goal_images = goal_images  # [N, C, H, W] uint8: a tensor (CPU or device) or a read-only numpy array
        self.x1 = x1.to(device)
        self.rates = step_rates(mdp, device)
        self.rng = np.random.default_rng(seed)
        self.bf16 = resolve_bf16(acting.bf16, device)  # "auto": on where this device computes bf16 natively
        self.weight_version = 0

    def draw_goals(self, count: int | None = None) -> np.ndarray:
        """Goal indices sampled uniformly with replacement: [count] int64."""
        count = count or self.acting.goals_per_rollout
        return self.rng.integers(0, self.goal_images.shape[0], size=count, dtype=np.int64)

    @torch.inference_mode()
    def collect(self, goal_indices: np.ndarray | None = None, weight_lag: int = 0) -> TrajectoryBatch:
        """One batched GC-agent rollout (the configured behaviour), as numpy for replay."""
        indices = self.draw_goals() if goal_indices is None else goal_indices
        goals = to_unit_range(torch.as_tensor(self.goal_images[indices]).to(self.device))  # numpy or torch images
        was_training = self.agent.training
        self.agent.eval()
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            episodes = gc_agent_rollout(self.agent, self.x1, goals, self.rates, self.mdp, self.acting)
        self.agent.train(was_training)
        return TrajectoryBatch(
            states=episodes.states.float().cpu().numpy(),
            selections=episodes.selections.to(torch.int16).cpu().numpy(),
            goal_indices=indices.astype(np.int64),
            final_loss=episodes.final_loss.float().cpu().numpy(),
            posteriors=episodes.selection_posteriors(self.mdp.num_proposals).to(torch.float16).cpu().numpy(),
            weight_version=self.weight_version, weight_lag=weight_lag)

    def load_weights(self, payload: bytes) -> None:
        """Replace the local networks' weights with a published version (a weights message)."""
        self.weight_version = load_weights_message(self.agent, payload)

    def rng_state(self) -> dict:
        """The goal sampler's state, for checkpoints."""
        return numpy_rng_to_text(self.rng)

    def set_rng_state(self, state: dict) -> None:
        """Continue the goal sampler where a checkpoint left it."""
        self.rng.bit_generator.state = numpy_rng_from_text(state)
