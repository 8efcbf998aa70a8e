"""Trajectories of the two agents (Algorithms 1 and 3) and the unfolded proposal network.

All functions run a whole batch of goals (or samples) at once: one forward pass per network per
step, whatever the batch size. They take the networks as arguments and never touch replay or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.method.mdp import goal_loss, transition
from common.method.networks import ProposalUNet, SelectionNet, VAgent, selection_logits


@dataclass
class Trajectories:
    """A batch of B episodes: what Algorithm 1 records in the three replay memories."""

    states: torch.Tensor  # [B, H+1, C, H, W]: x_1 .. x_{H+1}
    selections: torch.Tensor  # [B, H] long: a_1 .. a_H
    final_loss: torch.Tensor  # [B]: loss of the last step (the loss of every other step is 0)
    posteriors: torch.Tensor | None = None  # [B, H, A]: the GC-agent's distribution over each step's selections

    def selection_posteriors(self, num_proposals: int) -> torch.Tensor:
        """[B, H, A]: the candidate GC-agents' posteriors, or one-hot choices for a rule that has none."""
        if self.posteriors is not None:
            return self.posteriors
        return torch.nn.functional.one_hot(self.selections, num_proposals).float()


def goal_conditioned_selection(q_values: torch.Tensor, selection_logits: torch.Tensor, kappa: float) -> torch.Tensor:
    """Algorithm 1 line 4 with the exploration malus: argmin_a Q_a + kappa * log S-select(a).

    q_values, selection_logits: [B, A] -> selections [B]. A rarely chosen selection has a very
    negative log-probability, so the malus pulls the argmin towards it (section 3.2, Exploration).
    """
    if kappa == 0:
        return q_values.argmin(dim=1)
    return (q_values + kappa * torch.log_softmax(selection_logits, dim=1)).argmin(dim=1)


def _step_index(h: int, batch: int, device) -> torch.Tensor:
    return torch.full((batch,), h, dtype=torch.long, device=device)


def goal_conditioned_rollout(agent: VAgent, x1: torch.Tensor, goals: torch.Tensor, rates: torch.Tensor,
                             kappa: float, sigma: float, loss_reduction: str = "mean",
                             likelihood: str = "gaussian") -> Trajectories:
    """Algorithm 1 for B goals at once: the GC-agent picks, S-prop-net proposes, eq. (5) steps.

    x1 [C, H, W], goals [B, C, H, W], rates [H]. Call under torch.inference_mode() when acting.
    """
    batch = goals.shape[0]
    state = x1.unsqueeze(0).expand(batch, *x1.shape).contiguous()
    states, selections = [state], []
    prefix = torch.zeros(batch, rates.shape[0], dtype=torch.long, device=goals.device)  # a_<h, for a prefix prior
    for h in range(rates.shape[0]):
        step = _step_index(h, batch, goals.device)
        q_values = agent.goal_q(state, step, goals)
        logits = selection_logits(agent.selection, state, step, prefix) if kappa else q_values
        selection = goal_conditioned_selection(q_values, logits, kappa)
        state = transition(state, agent.proposal(state, step, selection), rates[h])
        states.append(state)
        selections.append(selection)
        prefix[:, h] = selection
    return Trajectories(torch.stack(states, dim=1), torch.stack(selections, dim=1),
                        goal_loss(state, goals, sigma, loss_reduction, likelihood))


def greedy_reconstruction(agent: VAgent, x1: torch.Tensor, goals: torch.Tensor, rates: torch.Tensor,
                          sigma: float) -> Trajectories:
    """The GC-agent's reconstruction of its goals: Algorithm 1 without the exploration malus."""
    return goal_conditioned_rollout(agent, x1, goals, rates, kappa=0.0, sigma=sigma)


def selection_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """S-select's probabilities for sampling, sharpened or flattened: logits [B, A] -> probs [B, A].

    temperature 1 and no top_k is Algorithm 3's plain sampling; temperature -> 0 is the argmax; top_k keeps
    the k most likely selections of each row (renormalised).
    """
    if top_k is not None and top_k < logits.shape[1]:
        kth = logits.topk(top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits.float() / temperature, dim=1)


def s_agent_sample(proposal: ProposalUNet, selection: SelectionNet, x1: torch.Tensor, num_samples: int,
                   rates: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
                   top_k: int | None = None) -> Trajectories:
    """Algorithm 3: the goal-agnostic S-agent generates; sampling a_h is the only randomness.

    Returns whole trajectories (x_{H+1} is states[:, -1]); final_loss is NaN as there is no goal.
    temperature and top_k shape S-select's distribution (selection_distribution); the defaults are the paper's.
    """
    state = x1.unsqueeze(0).expand(num_samples, *x1.shape).contiguous()
    states, selections = [state], []
    prefix = torch.zeros(num_samples, rates.shape[0], dtype=torch.long, device=x1.device)  # a_<h drawn so far
    for h in range(rates.shape[0]):
        step = _step_index(h, num_samples, x1.device)
        probs = selection_distribution(selection_logits(selection, state, step, prefix), temperature, top_k)
        chosen = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        state = transition(state, proposal(state, step, chosen), rates[h])
        states.append(state)
        selections.append(chosen)
        prefix[:, h] = chosen
    nan = torch.full((num_samples,), float("nan"), device=x1.device)
    return Trajectories(torch.stack(states, dim=1), torch.stack(selections, dim=1), nan)


def unfold_proposals(proposal: ProposalUNet, x1: torch.Tensor, selections: torch.Tensor,
                     rates: torch.Tensor) -> torch.Tensor:
    """S-prop-net_{theta,U}(a_1..a_H) = x_{H+1}: the final state as a differentiable function of theta.

    x1 [C, H, W], selections [B, H] long, rates [H] -> x_{H+1} [B, C, H, W]. Gradients flow through
    every step, since each x_h feeds the proposal of step h.
    """
    return unfold_trajectory(proposal, x1, selections, rates)[-1]


def unfold_trajectory(proposal: ProposalUNet, x1: torch.Tensor, selections: torch.Tensor,
                      rates: torch.Tensor) -> list[torch.Tensor]:
    """The unfolded network's every state: x1 [C, H, W], selections [B, H] long, rates [H] -> H+1 states
    [B, C, H, W] (x_1 .. x_{H+1}), differentiable as unfold_proposals."""
    batch = selections.shape[0]
    states = [x1.unsqueeze(0).expand(batch, *x1.shape)]
    for h in range(selections.shape[1]):
        step = _step_index(h, batch, selections.device)
        states.append(transition(states[-1], proposal(states[-1], step, selections[:, h]), rates[h]))
    return states

