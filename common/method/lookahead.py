"""The candidate GC-agents (extensions of the paper): choose selections by scoring the proposals' next states.

The paper's GC-agent picks a_h = argmin_a GC-select-Qnet(x_h, h, goal)_a, which cannot tell codes apart
before the proposal network has made them different. The lookahead computes all A proposals at step h in
one batched call, steps each with eq. (5), and keeps the candidates whose next state x_{h+1} scores best:
nearest the goal by default, or by a learned afterstate value, with or without the S-agent's prior
(common/method/scoring.py). With a beam of K it keeps the K best partial selection sequences per goal
(K = 1 is greedy); at h = H the value is the goal loss itself, so the last choice is exact.

Read as amortised EM: this is an approximate E-step (a search for the best code of each goal under the
current proposal network); the unfolded proposal update is the M-step. Pure tensors, no Ray, no replay.
"""

from __future__ import annotations

import torch

from common.method.mdp import goal_loss, transition
from common.method.networks import ProposalUNet
from common.method.rollout import Trajectories, goal_conditioned_rollout
from common.method.scoring import CandidateScoring, posterior, posterior_temperature


FAN_OUT_ROWS = 256  # U-Net rows per call: on a CPU the cost per row triples past ~512 rows (cache)


def proposal_fan_out(proposal: ProposalUNet, state: torch.Tensor, step: torch.Tensor,
                     alpha: torch.Tensor) -> torch.Tensor:
    """x_{h+1} for every selection: state [B, C, H, W], step [B] long, alpha [B] -> [B, A, C, H, W].

    B*A U-Net rows in chunks of FAN_OUT_ROWS; rows may be at different steps (all-action Q targets).
    """
    chunk = max(1, FAN_OUT_ROWS // proposal.num_proposals)
    return torch.cat([_fan_out(proposal, state[i:i + chunk], step[i:i + chunk], alpha[i:i + chunk])
                      for i in range(0, state.shape[0], chunk)])


def _fan_out(proposal: ProposalUNet, state: torch.Tensor, step: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    batch, num = state.shape[0], proposal.num_proposals
    states = state.repeat_interleave(num, dim=0)  # [B*A, C, H, W], row b*A + a
    selections = torch.arange(num, device=state.device).repeat(batch)
    nxt = transition(states, proposal(states, step.repeat_interleave(num), selections), alpha.repeat_interleave(num))
    return nxt.view(batch, num, *state.shape[1:])


def _gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [B, N, ...], index [B, K] -> [B, K, ...]."""
    shape = index.shape + (1,) * (tensor.dim() - 2)
    return tensor.gather(1, index.view(shape).expand(*index.shape, *tensor.shape[2:]))


@torch.no_grad()
def lookahead_rollout(proposal: ProposalUNet, x1: torch.Tensor, goals: torch.Tensor, rates: torch.Tensor,
                      sigma: float, beam_width: int = 1, loss_reduction: str = "mean",
                      scoring: CandidateScoring | None = None) -> Trajectories:
    """Beam search over selection sequences towards B goals: x1 [C, H, W], goals [B, C, H, W], rates [H].

    Each candidate's score is its path's prior cost plus its value (common/method/scoring.py; by default the
    distance alone: the lookahead). Returns the best sequence found for each goal, with its states, as the
    GC-agent's episode. Cost: K * A proposal rows per goal and step (K = beam_width).
    """
    scoring = scoring or CandidateScoring()
    batch, num, horizon = goals.shape[0], proposal.num_proposals, rates.shape[0]
    beams = x1.expand(batch, 1, *x1.shape)  # [B, k, C, H, W], k = 1 before the first step
    cost = goals.new_zeros(batch, 1, dtype=torch.float32)  # [B, k]: the prior cost of each beam's path
    states, parents, choices, posteriors = [beams], [], [], []
    temperature = posterior_temperature(scoring.prior_weight, sigma, x1.numel(), scoring.likelihood)
    for h in range(horizon):
        k = beams.shape[1]
        flat = beams.reshape(batch * k, *x1.shape)
        step = torch.full((batch * k,), h, dtype=torch.long, device=goals.device)
        candidates = proposal_fan_out(proposal, flat, step, rates[h].expand(batch * k))
        candidates = candidates.view(batch, k * num, *x1.shape)  # candidate j: beam j // A, selection j % A
        path_cost = cost.repeat_interleave(num, dim=1) + scoring.prior_cost(flat, step, num).view(batch, k * num)
        scores = path_cost + scoring.values(candidates, h + 1, goals, horizon)  # [B, k*A]
        keep = scoring.choose(scores, beam_width)
        if beam_width == 1:  # one path: its per-step posterior over the A candidates (soft S-select targets)
            keep = scoring.s_agent_override(keep, flat, step, h)
            posteriors.append(posterior(scores, temperature))
        beams, cost = _gather_rows(candidates, keep), path_cost.gather(1, keep)
        parents.append(keep // num)
        choices.append(keep % num)
        states.append(beams)
    path = _best_path(states, parents, choices, goals, sigma, loss_reduction, scoring.likelihood)
    path.posteriors = torch.stack(posteriors, dim=1) if beam_width == 1 else None  # [B, H, A]
    return path


def _best_path(states: list[torch.Tensor], parents: list[torch.Tensor], choices: list[torch.Tensor],
               goals: torch.Tensor, sigma: float, loss_reduction: str, likelihood: str) -> Trajectories:
    """Follow the back-pointers from the best final beam (top-k is sorted, so beam 0) to x_1."""
    batch = goals.shape[0]
    beam = torch.zeros(batch, 1, dtype=torch.long, device=goals.device)
    path_states, path_choices = [_gather_rows(states[-1], beam)[:, 0]], []
    for h in reversed(range(len(choices))):
        path_choices.append(choices[h].gather(1, beam)[:, 0])
        beam = parents[h].gather(1, beam)
        path_states.append(_gather_rows(states[h], beam)[:, 0])
    final = path_states[0]
    return Trajectories(torch.stack(path_states[::-1], dim=1), torch.stack(path_choices[::-1], dim=1),
                        goal_loss(final, goals, sigma, loss_reduction, likelihood))


def gc_agent_rollout(agent, x1: torch.Tensor, goals: torch.Tensor, rates: torch.Tensor, mdp, acting) -> Trajectories:
    """Algorithm 1 with the configured behaviour: the paper's Q + malus rule, a candidate-scoring agent (the
    lookahead or the afterstate agent), or a mix.

    With a candidate-scoring behaviour, the first round(q_fraction * B) goals act by the paper's rule and the
    rest by the candidate scoring; the episodes come back in the goals' order.
    """
    if acting.behaviour == "q":
        return goal_conditioned_rollout(agent, x1, goals, rates, acting.kappa, mdp.sigma, mdp.loss_reduction,
                                        mdp.likelihood)
    by_q = int(round(acting.q_fraction * goals.shape[0]))
    parts = []
    if by_q:
        parts.append(goal_conditioned_rollout(agent, x1, goals[:by_q], rates, acting.kappa, mdp.sigma,
                                              mdp.loss_reduction, mdp.likelihood))
    if by_q < goals.shape[0]:
        scoring = CandidateScoring.for_acting(agent, acting, goals.shape[0] - by_q, rates.shape[0], mdp.likelihood)
        parts.append(lookahead_rollout(agent.proposal, x1, goals[by_q:], rates, mdp.sigma, acting.beam_width,
                                       mdp.loss_reduction, scoring))
    merged = Trajectories(*(torch.cat([getattr(p, f) for p in parts]) for f in ("states", "selections", "final_loss")))
    merged.posteriors = torch.cat([p.selection_posteriors(mdp.num_proposals) for p in parts])
    return merged
