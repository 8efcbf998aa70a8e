"""The losses and target of Algorithm 2 as pure functions of tensors.

Q-values here are expected losses, so every max of textbook DQN is a min (the paper's convention).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from common.method.mdp import pixel_error


def double_dqn_target(next_q_online: torch.Tensor, next_q_target: torch.Tensor, loss: torch.Tensor,
                      is_last: torch.Tensor) -> torch.Tensor:
    """Algorithm 2 line 12 with Double-DQN: loss + Q_target(x', h+1)[argmin_b Q_online(x', h+1)].

    next_q_online, next_q_target: [B, A] at (x', h+1, goal); loss: [B] (non-zero only at h = H);
    is_last: [B] bool, true at h = H where the episode ends and nothing is bootstrapped -> [B].
    The online network chooses, the target network values, which curbs the optimism of a plain min.
    """
    best = next_q_online.argmin(dim=1, keepdim=True)
    bootstrap = next_q_target.gather(1, best).squeeze(1)
    return loss + torch.where(is_last, torch.zeros_like(bootstrap), bootstrap)


def q_regression_loss(q_values: torch.Tensor, selections: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Algorithm 2 line 14: mean squared error of Q(x, h, goal)[a] against the (fixed) targets.

    q_values [B, A], selections [B] long, targets [B] -> scalar.
    """
    chosen = q_values.gather(1, selections.unsqueeze(1)).squeeze(1)
    return F.mse_loss(chosen, targets.detach())


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, rho: float) -> None:
    """Algorithm 2 line 16: psi_target <- rho * psi + (1 - rho) * psi_target, in place.

    Buffers (none in these networks) are copied, since averaging running statistics means nothing.
    """
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o, rho)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def averaging_rate(rate: float, updates: int) -> float:
    """The Polyak rate of the averaged S-agent after `updates` updates of a network (extension): the warm-up
    9 / (10 + updates) of TensorFlow's ExponentialMovingAverage, so early averages forget the random start, until it
    falls to `rate`."""
    return max(rate, 9.0 / (10.0 + updates))


def selection_cross_entropy(logits: torch.Tensor, selections: torch.Tensor) -> torch.Tensor:
    """Algorithm 2 line 7: the S-agent imitates the GC-agent's choices, -log S-select(a | x, h).

    logits [B, A], selections [B] long -> scalar mean; or selections [B, A] float, the GC-agent's posterior
    over the A selections (soft targets, an extension): -sum_a p(a) log S-select(a | x, h).
    """
    return F.cross_entropy(logits, selections)


def unfolded_proposal_loss(final_state: torch.Tensor, goals: torch.Tensor,
                           likelihood: str = "gaussian") -> torch.Tensor:
    """Algorithm 2 line 3: ||S-prop-net_U(a_1..a_H) - goal||^2, averaged over pixels and batch.

    The per-pixel mean (not the sum) only rescales the gradient, keeping rates size-independent. With the
    Laplace last step (extension) the absolute error, whose minimiser over goals sharing a code is their median.
    """
    return pixel_error(final_state - goals, likelihood).mean()


def all_action_targets(next_q_online: torch.Tensor, next_q_target: torch.Tensor, final_loss: torch.Tensor,
                       is_last: torch.Tensor) -> torch.Tensor:
    """Targets for every selection at once (extension): [B, A, A] x2, [B, A], [B] -> [B, A].

    next_q_online/next_q_target hold Q(x'_a, h+1, goal) for the next state x'_a of each selection a;
    final_loss [B, A] is the goal loss of x'_a. At h = H the target is that loss, exactly; before it,
    the Double-DQN value of x'_a. The transition is deterministic and known, so no selection goes
    untrained because the behaviour did not take it.
    """
    best = next_q_online.argmin(dim=2, keepdim=True)
    bootstrap = next_q_target.gather(2, best).squeeze(2)
    return torch.where(is_last.unsqueeze(1), final_loss, bootstrap)


def afterstate_targets(next_value_target: torch.Tensor, next_distance: torch.Tensor,
                       next_is_final: torch.Tensor) -> torch.Tensor:
    """The afterstate value's Double-DQN target for V(x_{h+1}, h + 1, goal) (extension): [B] x3 -> [B].

    x_{h+2} is the afterstate the GC-agent moved to next: the argmin of the online V over the next fan-out,
    taken when it acted; the target network values it. Where x_{h+2} is the last state, the target is its
    exact per-pixel goal loss (next_distance), and nothing is bootstrapped.
    """
    return torch.where(next_is_final, next_distance, next_value_target)


def demonstration_margin_loss(q_values: torch.Tensor, demonstrated: torch.Tensor, margin: float) -> torch.Tensor:
    """Large-margin imitation of a demonstrator's choices by the Q-network (DQfD, Hester et al. 2018), in the
    paper's min convention: Q(a_E) - min_a [Q(a) - margin * 1(a != a_E)], zero once a_E is the argmin by margin.

    q_values [B, A], demonstrated [B] long -> scalar mean.
    """
    penalty = torch.full_like(q_values, margin).scatter_(1, demonstrated.unsqueeze(1), 0.0)
    chosen = q_values.gather(1, demonstrated.unsqueeze(1)).squeeze(1)
    return (chosen - (q_values - penalty).min(dim=1).values).mean()
