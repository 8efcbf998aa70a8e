"""How the GC-agent scores the A candidates of a step: the one seam acting, encoding and the benchmarks share.

At step h the candidate GC-agents (the lookahead and the afterstate agent, both extensions of the paper) step
every proposal with eq. (5), x'_a = x_h + alpha_h y_a(x_h), and score each candidate

    score_a = value(x'_a, h + 1, goal) - kappa' * log S-select(a | x_h)

- value: how far the goal is from x'_a. The lookahead uses the distance itself (per-pixel squared error, so a
  greedy one-step search); the afterstate agent a learned V(x'_a, h + 1, goal) of the loss still reachable
  from x'_a (GoalValueNet, learned by Double-DQN, common/method/losses.py). At h = H both are the exact goal
  loss of x'_a.
- the prior term: the paper's bound is reconstruction + KL(GC-policy || S-policy); with a per-pixel
  distance and sigma^2 = 1/2 the bound's own weight is kappa' = 2 sigma^2 / d per nat. It pulls the
  GC-agent towards selections the S-agent already makes, so the S-agent can imitate it (0: distance alone).
  The paper's exploration malus kappa log S-select has the opposite sign: it is exploration, not the bound.
- choice: the argmin (greedy, or a beam of the K lowest path scores), or with `stochastic` a draw from the
  posterior softmax(-score / kappa') = S-select(a) exp(-value / kappa') / Z.

Pure tensors and networks, no Ray, no replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.method.config import ActingConfig
from common.method.mdp import likelihood_scale, pixel_error


def distance_to_goal(candidates: torch.Tensor, goals: torch.Tensor, likelihood: str = "gaussian") -> torch.Tensor:
    """Per-pixel squared distance of candidate states to their goal: [B, K, C, H, W], [B, C, H, W] -> [B, K].

    With the Laplace last step (mdp.likelihood, extension) the per-pixel absolute distance, its own loss.
    """
    return pixel_error(candidates.float() - goals.float().unsqueeze(1), likelihood).flatten(2).mean(dim=2)


@dataclass
class CandidateScoring:
    """What scores a step's candidates: the prior's weight, the choice rule, and the networks they need."""

    prior_weight: float = 0.0  # kappa': weight of -log S-select(a | x_h), in per-pixel distance units per nat
    stochastic: bool = False  # draw from softmax(-score / kappa') instead of taking the argmin
    selection: nn.Module | None = None  # S-select-net (needed when prior_weight > 0 or prefix_steps is given)
    value: nn.Module | None = None  # GoalValueNet (the afterstate agent); None: the distance (the lookahead)
    prefix_steps: torch.Tensor | None = None  # [B] long: steps the S-agent takes before the GC-agent (hybrid)
    likelihood: str = "gaussian"  # mdp.likelihood: which distance the candidates are scored by

    @classmethod
    def for_acting(cls, agent, acting: ActingConfig, batch: int = 0, horizon: int = 1,
                   likelihood: str = "gaussian") -> CandidateScoring:
        """The scoring of a configured behaviour ("lookahead" or "afterstate") with the agent's networks; with
        acting.s_prefix_fraction, that share of the `batch` goals gets an S-agent prefix of 1..H-1 steps."""
        value = agent.goal_value if acting.behaviour == "afterstate" else None
        prefix = hybrid_prefix_steps(batch, horizon, acting.s_prefix_fraction) if acting.s_prefix_fraction else None
        uses_selection = acting.prior_weight or prefix is not None
        return cls(acting.prior_weight, acting.stochastic, agent.selection if uses_selection else None, value, prefix,
                   likelihood)

    def prior_cost(self, parents: torch.Tensor, step: torch.Tensor, num: int) -> torch.Tensor:
        """-kappa' log S-select(a | x_h) for each parent state and selection: [M, C, H, W], [M] -> [M, A]."""
        if not self.prior_weight:
            return parents.new_zeros(parents.shape[0], num, dtype=torch.float32)
        log_prior = torch.log_softmax(self.selection(parents, step).float(), dim=1)
        return -self.prior_weight * log_prior

    def values(self, candidates: torch.Tensor, next_step: int, goals: torch.Tensor, horizon: int) -> torch.Tensor:
        """value(x'_a, h + 1, goal): candidates [B, K, C, H, W], goals [B, C, H, W] -> [B, K].

        The distance where there is no learned value or the episode ends (next_step == H: the exact loss).
        """
        if self.value is None or next_step >= horizon:
            return distance_to_goal(candidates, goals, self.likelihood)
        batch, count = candidates.shape[:2]
        flat = candidates.flatten(0, 1)
        step = torch.full((flat.shape[0],), next_step, dtype=torch.long, device=flat.device)
        return self.value(flat, step, goals.repeat_interleave(count, dim=0)).float().view(batch, count)

    def choose(self, scores: torch.Tensor, keep: int) -> torch.Tensor:
        """Indices of the candidates kept: [B, N] scores -> [B, keep], best first (a draw when stochastic)."""
        if self.stochastic and self.prior_weight > 0:
            return torch.multinomial(posterior(scores, self.prior_weight), keep)
        return scores.topk(min(keep, scores.shape[1]), dim=1, largest=False).indices


    def s_agent_override(self, keep: torch.Tensor, parents: torch.Tensor, step: torch.Tensor, h: int) -> torch.Tensor:
        """Hybrid episodes (extension): rows still in their S-agent prefix take Algorithm 3's draw from S-select
        instead of the scored choice. keep [B, 1] (a single beam), parents [B, C, H, W] -> keep [B, 1]."""
        if self.prefix_steps is None or not bool((self.prefix_steps > h).any()):
            return keep
        probs = torch.softmax(self.selection(parents, step).float(), dim=1)
        drawn = torch.multinomial(probs, 1)
        return torch.where((self.prefix_steps > h).view(-1, 1).to(keep.device), drawn, keep)


def posterior_temperature(prior_weight: float, sigma: float, pixels: int, likelihood: str = "gaussian") -> float:
    """The posterior's temperature in per-pixel distance units: kappa' where the prior is on, else the bound's
    own 2 sigma^2 / d (the Gaussian likelihood exp(-d * distance / (2 sigma^2)) under a uniform prior; the
    Laplace one's exp(-d * distance / sigma) gives sigma / d)."""
    if prior_weight > 0:
        return prior_weight
    return likelihood_scale(sigma, likelihood) / pixels


def hybrid_prefix_steps(batch: int, horizon: int, fraction: float) -> torch.Tensor:
    """[batch] S-agent prefix lengths: round(fraction * batch) goals (the last ones) get 1..H-1 steps, the rest 0.

    The proposal network is then also trained from states the S-agent itself reaches (exposure bias), and the
    S-agent learns the GC-agent's choices there, as DAgger does.
    """
    steps = torch.zeros(batch, dtype=torch.long)
    count = int(round(fraction * batch))
    if count and horizon > 1:
        steps[batch - count:] = torch.randint(1, horizon, (count,))
    return steps


def posterior(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(-score / temperature) over the candidates: [B, N] -> [B, N] (rows sum to one)."""
    return torch.softmax(-scores / temperature, dim=1)
