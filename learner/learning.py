"""Algorithm 2 as a plain class: the Q, selection and unfolded-proposal updates and the Polyak target.

The learner owns the networks, their optimisers and the target Q-network. It knows nothing of where
its batches come from (one in-process replay, or Ray shards), which is what lets the single-process
reference and the distributed runtime share every line of the method.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from buffers.tables import ReplaySample, SampleRequest
from common.device import resolve_bf16
from common.method.config import LearningConfig, MDPConfig
from common.method.pixels import to_unit_range
from common.method.lookahead import proposal_fan_out
from common.method.losses import (afterstate_targets, all_action_targets, averaging_rate, demonstration_margin_loss,
                                  double_dqn_target, polyak_update, q_regression_loss, selection_cross_entropy,
                                  unfolded_proposal_loss)
from common.method.mdp import goal_loss, step_rates
from common.method.networks import VAgent
from common.method.rollout import unfold_trajectory

UPDATE_KINDS = ("proposal", "selection", "q", "value")
AVERAGED = ("proposal", "selection")  # the S-agent's networks, which sampling uses


@dataclass
class UpdateCounts:
    """How many learner steps ran and how many updates of each kind they made."""

    steps: int = 0
    proposal: int = 0
    selection: int = 0
    q: int = 0
    value: int = 0  # the afterstate value network's updates (extension)


def _tensor(array: np.ndarray, device, dtype=None) -> torch.Tensor:
    """numpy batch -> tensor on the learner's device (decoded messages are read-only: copy those)."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device=device, dtype=dtype, non_blocking=True)


class Learner:
    """One step = the updates of Algorithm 2 that are due, each from its own replay batch."""

    def __init__(self, agent: VAgent, mdp: MDPConfig, learning: LearningConfig, goal_images: torch.Tensor,
                 x1: torch.Tensor, device: torch.device, train_q: bool = True):
        self.mdp, self.learning, self.device, self.train_q = mdp, learning, device, train_q
        self.agent = agent.to(device)
        self.target_q = copy.deepcopy(self.agent.goal_q).requires_grad_(False)
        self.optimizers = {
            "proposal": torch.optim.Adam(self.agent.proposal.parameters(), lr=learning.proposal_lr),
            "selection": torch.optim.Adam(self.agent.selection.parameters(), lr=learning.selection_lr),
            "q": torch.optim.Adam(self.agent.goal_q.parameters(), lr=learning.q_lr)}
        self.target_value = None  # the afterstate agent's Polyak target (extension), when the agent has a value net
        if self.agent.goal_value is not None:
            self.target_value = copy.deepcopy(self.agent.goal_value).requires_grad_(False)
            self.optimizers["value"] = torch.optim.Adam(self.agent.goal_value.parameters(), lr=learning.q_lr)
        self.goal_images = goal_images.to(device)  # [N, C, H, W] uint8: goals are looked up by index
        self.x1 = x1.to(device)
        self.rates = step_rates(mdp, device)
        self.bf16 = resolve_bf16(learning.bf16, device)  # "auto": on where this device computes bf16 natively
        self.counts = UpdateCounts()
        self.averaged = self._averaged_copy() if learning.averaging_rate else None
        self.sequence_selection_loss = float("nan")  # S-select's last loss on code sequences (extension)

    def _averaged_copy(self) -> VAgent:
        """The averaged S-agent (extension): its own proposal and selection networks; the GC-agent's networks are the
        online ones, shared, so evaluating it with any encoder needs nothing else."""
        averaged = copy.deepcopy(self.agent).requires_grad_(False)
        averaged.goal_q, averaged.goal_value = self.agent.goal_q, self.agent.goal_value
        return averaged

    @property
    def evaluation_agent(self) -> VAgent:
        """The agent that sampling and evaluation should read: the averaged S-agent when averaging is on."""
        return self.averaged if self.averaged is not None else self.agent

    def next_request(self) -> SampleRequest:
        """Batch sizes the next step needs: 0 for an update that is not due (Algorithm 2's 'if')."""
        return self.request_for(self.counts.steps)

    def request_for(self, step: int) -> SampleRequest:
        """The request of any step, so a distributed learner can ask for batches ahead of time."""
        cfg = self.learning
        due = lambda every, batch: batch if step % every == 0 else 0  # noqa: E731
        from_replay = cfg.selection_source == "replay"  # else S-select learns inside the proposal update
        return SampleRequest(due(cfg.q_every, cfg.q_batch),
                             due(cfg.selection_every, cfg.selection_batch) if from_replay else 0,
                             due(cfg.proposal_every, cfg.proposal_batch))

    def step(self, sample: ReplaySample) -> dict[str, float]:
        """Run the updates whose batches are present; returns their losses by kind."""
        losses = {}
        if sample.proposal_sequences is not None:
            losses["proposal"] = self.update_proposal(sample.proposal_sequences)
            if self.learning.selection_source == "sequences":
                losses["selection"] = self.sequence_selection_loss
        if sample.selections is not None:
            losses["selection"] = self.update_selection(sample.selections)
        if sample.gc_transitions is not None and self.train_q:
            losses["q"] = self.update_q(sample.gc_transitions)
        if sample.gc_transitions is not None and self.target_value is not None:
            losses["value"] = self.update_value(sample.gc_transitions)
        self.counts.steps += 1
        return losses

    def _goals(self, goal_index: np.ndarray) -> torch.Tensor:
        return to_unit_range(self.goal_images[_tensor(goal_index, self.device, torch.long)])

    def _apply(self, kind: str, loss: torch.Tensor, module: nn.Module) -> float:
        optimizer = self.optimizers[kind]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), self.learning.max_grad_norm)
        optimizer.step()
        setattr(self.counts, kind, getattr(self.counts, kind) + 1)
        if self.averaged is not None and kind in AVERAGED:
            rate = averaging_rate(self.learning.averaging_rate, getattr(self.counts, kind))
            polyak_update(getattr(self.averaged, kind), module, rate)
        return float(loss.detach())

    def _autocast(self):
        """bfloat16 autocast around forward passes when learning.bf16 resolves on (losses are taken in float32)."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16)

    def update_proposal(self, batch: dict[str, np.ndarray]) -> float:
        """Algorithm 2 lines 1-4: MSE of the unfolded network's final state against the goal."""
        selections = _tensor(batch["selections"], self.device, torch.long)  # [B, H]
        with self._autocast():
            states = unfold_trajectory(self.agent.proposal, self.x1, selections, self.rates)  # H+1 x [B, C, H, W]
        loss = unfolded_proposal_loss(states[-1].float(), self._goals(batch["goal_index"]), self.mdp.likelihood)
        if self.learning.selection_source == "sequences":  # before the step below changes the proposal network
            self.sequence_selection_loss = self.update_selection_on_sequences(torch.stack(states[:-1], dim=1).detach().float(), selections)
        return self._apply("proposal", loss, self.agent.proposal)

    def update_selection_on_sequences(self, states: torch.Tensor, selections: torch.Tensor) -> float:
        """S-select from whole code sequences (extension): every step of each, at the states the current proposal
        network makes, with its prefix a_<h. states [B, H, C, H, W] (x_1 .. x_H), selections [B, H] long."""
        batch, horizon = selections.shape
        step = torch.arange(horizon, device=self.device).repeat(batch)  # [B*H], row-major like flatten(0, 1)
        with self._autocast():
            logits = self.agent.selection(states.flatten(0, 1), step, selections.repeat_interleave(horizon, 0))
        loss = selection_cross_entropy(logits.float(), selections.flatten())
        return self._apply("selection", loss, self.agent.selection)

    def update_selection(self, batch: dict[str, np.ndarray]) -> float:
        """Algorithm 2 lines 5-8: cross-entropy of S-select-net against the GC-agent's selections."""
        state = _tensor(batch["state"], self.device)
        step = _tensor(batch["step"], self.device, torch.long)
        with self._autocast():
            logits = self.agent.selection(state, step).float()
        if self.learning.selection_targets == "soft":  # the GC-agent's posterior over the candidates (extension)
            loss = selection_cross_entropy(logits, _tensor(batch["posterior"], self.device))
        else:
            loss = selection_cross_entropy(logits, _tensor(batch["selection"], self.device, torch.long))
        return self._apply("selection", loss, self.agent.selection)

    def update_q(self, batch: dict[str, np.ndarray]) -> float:
        """Algorithm 2 lines 9-17: Double-DQN regression, then the Polyak target when due."""
        state, next_state = _tensor(batch["state"], self.device), _tensor(batch["next_state"], self.device)
        step = _tensor(batch["step"], self.device, torch.long)
        goal = self._goals(batch["goal_index"])
        with self._autocast():
            q_values = self.agent.goal_q(state, step, goal).float()  # [B, A]
        selection = _tensor(batch["selection"], self.device, torch.long)
        if self.learning.q_target == "all_actions":
            loss = F.mse_loss(q_values, self._all_action_targets(state, step, goal))
        else:
            loss = q_regression_loss(q_values, selection,
                                     self._sampled_targets(next_state, step, goal, _tensor(batch["loss"], self.device)))
        if self.learning.demo_margin > 0:  # the acting GC-agent as a demonstrator (extension)
            loss = loss + self.learning.demo_weight * demonstration_margin_loss(q_values, selection,
                                                                                self.learning.demo_margin)
        value = self._apply("q", loss, self.agent.goal_q)
        if self.counts.q % self.learning.target_every == 0:
            polyak_update(self.target_q, self.agent.goal_q, self.learning.rho)
        return value

    def update_value(self, batch: dict[str, np.ndarray]) -> float:
        """The afterstate agent (extension): regress V(x_h, h, goal) of the state reached after h steps on the
        Double-DQN target of the next afterstate x_{h+1} (losses.afterstate_targets), then the Polyak target."""
        state, next_state = _tensor(batch["state"], self.device), _tensor(batch["next_state"], self.device)
        step = _tensor(batch["step"], self.device, torch.long)
        goal = self._goals(batch["goal_index"])
        with self._autocast():
            values = self.agent.goal_value(state, step, goal).float()  # [B]
        with torch.no_grad():
            next_is_final = step == self.mdp.horizon - 1
            next_step = torch.clamp(step + 1, max=self.mdp.horizon - 1)  # rows ending the episode are masked
            with self._autocast():
                bootstrap = self.target_value(next_state, next_step, goal).float()
            distance = (next_state - goal).pow(2).flatten(1).mean(dim=1)
            targets = afterstate_targets(bootstrap, distance, next_is_final)
        result = self._apply("value", F.mse_loss(values, targets), self.agent.goal_value)
        if self.counts.value % self.learning.target_every == 0:
            polyak_update(self.target_value, self.agent.goal_value, self.learning.rho)
        return result

    @torch.no_grad()
    def _sampled_targets(self, next_state, step, goal, loss) -> torch.Tensor:
        """Algorithm 2 line 12 for the selections taken: [B]."""
        is_last = step == self.mdp.horizon - 1
        next_step = torch.clamp(step + 1, max=self.mdp.horizon - 1)  # rows at h = H are masked anyway
        with self._autocast():
            online, target = self.agent.goal_q(next_state, next_step, goal), self.target_q(next_state, next_step, goal)
        return double_dqn_target(online.float(), target.float(), loss, is_last)

    @torch.no_grad()
    def _all_action_targets(self, state, step, goal) -> torch.Tensor:
        """The extension's targets for all A selections: [B, A] (see losses.all_action_targets)."""
        batch, num = state.shape[0], self.mdp.num_proposals
        goals = goal.repeat_interleave(num, dim=0)
        next_step = torch.clamp(step + 1, max=self.mdp.horizon - 1).repeat_interleave(num)
        with self._autocast():
            nxt = proposal_fan_out(self.agent.proposal, state, step, self.rates[step]).flatten(0, 1).float()
            online = self.agent.goal_q(nxt, next_step, goals).view(batch, num, num).float()  # [B, A, A]
            target = self.target_q(nxt, next_step, goals).view(batch, num, num).float()
        final = goal_loss(nxt, goals, self.mdp.sigma, self.mdp.loss_reduction, self.mdp.likelihood).view(batch, num)
        return all_action_targets(online, target, final, step == self.mdp.horizon - 1)

    def weights(self, averaged: bool = False) -> dict[str, np.ndarray]:
        """The agent's weights as CPU numpy arrays: the online ones, what rollout actors load (the target stays here),
        or with `averaged` the evaluation agent's (the averaged S-agent when averaging is on)."""
        agent = self.evaluation_agent if averaged else self.agent
        return {k: v.detach().cpu().numpy() for k, v in agent.state_dict().items()}

    def state_dict(self) -> dict:
        """Everything needed to continue learning exactly: networks, target, optimisers, counters."""
        targets = {"target_value": self.target_value.state_dict()} if self.target_value is not None else {}
        if self.averaged is not None:
            targets["averaged"] = {kind: getattr(self.averaged, kind).state_dict() for kind in AVERAGED}
        return {"agent": self.agent.state_dict(), "target_q": self.target_q.state_dict(), **targets,
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "counts": vars(self.counts).copy(), "precision": {"learning_bf16": self.bf16}}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of state_dict (tensors are moved to this learner's device)."""
        self.agent.load_state_dict(state["agent"])
        self.target_q.load_state_dict(state["target_q"])
        if self.target_value is not None:
            self.target_value.load_state_dict(state["target_value"])
        for kind, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][kind])
        self.counts = UpdateCounts(**state["counts"])
        if self.averaged is not None:  # a checkpoint made without averaging starts the average at its weights
            self.averaged = self._averaged_copy()
            averaged = state.get("averaged", {})
            for kind in (k for k in AVERAGED if k in averaged):
                getattr(self.averaged, kind).load_state_dict(averaged[kind])
