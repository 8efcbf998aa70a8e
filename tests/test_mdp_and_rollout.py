import math

import pytest
import torch
from torch import nn

from common.method.config import MDPConfig
from common.method.losses import unfolded_proposal_loss
from common.method.mdp import goal_loss, initial_state, step_rates, transition
from common.method.rollout import (goal_conditioned_rollout, goal_conditioned_selection, greedy_reconstruction,
                            s_agent_sample, unfold_proposals)

RATES = torch.tensor([1.0, 0.5, 1.0 / 3.0])


class ConstantPerSelection(nn.Module):
    """Proposal y = (a + 1) everywhere, whatever the state and step."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, state, step, selection):
        self.calls.append((step.clone(), selection.clone()))
        return (selection.float() + 1.0).view(-1, 1, 1, 1).expand_as(state).clone()


class TableProposal(nn.Module):
    """y = w[h * A + a] * (1 + state): one scalar parameter per (step, selection) pair."""

    def __init__(self, weights, num_proposals):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(weights, dtype=torch.float32))
        self.num_proposals = num_proposals

    def forward(self, state, step, selection):
        return self.w[step * self.num_proposals + selection].view(-1, 1, 1, 1) * (1.0 + state)


class FixedQ(nn.Module):
    """Q-values from a table [H, B, A], looked up by the step of the batch."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)
        self.steps, self.goals = [], []

    def forward(self, state, step, goal):
        self.steps.append(step.clone())
        self.goals.append(goal.clone())
        return self.table[int(step[0])].clone()


class FixedLogits(nn.Module):
    """Selection logits [A] (or a table [H, A] by step), the same for every row."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, state, step):
        row = self.logits if self.logits.dim() == 1 else self.logits[int(step[0])]
        return row.unsqueeze(0).expand(state.shape[0], -1).clone()


class Forbidden(nn.Module):
    def forward(self, *args):
        raise AssertionError("the selection network must not be called")


class FakeAgent(nn.Module):
    def __init__(self, goal_q, selection, proposal):
        super().__init__()
        self.goal_q, self.selection, self.proposal = goal_q, selection, proposal


def test_transition_float_rate():
    state = torch.tensor([[[[1.0, 2.0]]]])
    action = torch.tensor([[[[4.0, -6.0]]]])
    assert torch.equal(transition(state, action, 0.5), torch.tensor([[[[3.0, -1.0]]]]))


def test_transition_per_row_rates():
    state = torch.zeros(3, 1, 1, 2)
    action = torch.tensor([6.0, 6.0, 6.0]).view(3, 1, 1, 1).expand(3, 1, 1, 2)
    out = transition(state, action, RATES)
    expected = torch.tensor([6.0, 3.0, 2.0]).view(3, 1, 1, 1).expand(3, 1, 1, 2)
    assert torch.allclose(out, expected)


def test_rates_default_one_over_h():
    assert MDPConfig(horizon=4, num_proposals=2).rates() == pytest.approx((1.0, 0.5, 1.0 / 3.0, 0.25))


def test_rates_custom_list():
    mdp = MDPConfig(horizon=3, num_proposals=2, alphas=[0.5, 2, 0.25])
    assert mdp.rates() == (0.5, 2.0, 0.25)
    assert torch.equal(step_rates(mdp), torch.tensor([0.5, 2.0, 0.25]))


def test_step_rates_tensor_default():
    assert torch.allclose(step_rates(MDPConfig(horizon=3, num_proposals=2)), RATES)


def test_initial_state_zeros():
    x1 = initial_state(MDPConfig(), (3, 5, 4), None)
    assert x1.shape == (3, 5, 4) and not x1.any()


def test_initial_state_data_mean_is_a_copy():
    mean = torch.full((1, 2, 2), 0.25)
    x1 = initial_state(MDPConfig(initial_state="data_mean"), (1, 2, 2), mean)
    assert torch.equal(x1, mean)
    x1.add_(1.0)
    assert torch.equal(mean, torch.full((1, 2, 2), 0.25))


def test_initial_state_data_mean_wrong_shape_or_missing():
    mdp = MDPConfig(initial_state="data_mean")
    with pytest.raises(ValueError):
        initial_state(mdp, (1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError):
        initial_state(mdp, (1, 2, 2), None)


def test_goal_loss_default_sigma_is_pixel_mse():
    final = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    goal = torch.zeros(2, 1, 2, 2)
    goal[1] = 2.0
    loss = goal_loss(final, goal, MDPConfig().sigma)
    assert torch.allclose(loss, torch.tensor([7.5, 1.0]))


def test_goal_loss_sigma_two():
    final = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    loss = goal_loss(final, torch.zeros(1, 1, 2, 2), 2.0)
    assert torch.allclose(loss, torch.tensor([0.9375]))  # 7.5 / (2 * 4)


def test_unfold_proposals_matches_hand_unrolled():
    proposal = TableProposal([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], num_proposals=2)
    x1 = torch.tensor([[[0.0, 1.0]]])  # [C=1, H=1, W=2]
    selections = torch.tensor([[1, 0, 1], [0, 1, 0]])
    final = unfold_proposals(proposal, x1, selections, RATES)
    expected = torch.tensor([[[[21.5, 44.0]]], [[[15.0, 31.0]]]])
    assert torch.allclose(final, expected)


def test_unfolded_loss_gradient_reaches_every_step():
    proposal = TableProposal([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], num_proposals=2)
    final = unfold_proposals(proposal, torch.zeros(1, 1, 1), torch.tensor([[1, 0, 1]]), RATES)
    assert final.item() == pytest.approx(21.5)
    unfolded_proposal_loss(final, torch.zeros_like(final)).backward()
    # loss = x4^2, dx4/dw1 = 7.5, dx4/dw2 = 4.5, dx4/dw5 = 2.5 (rows h*A + a for steps 0, 1, 2)
    expected = torch.tensor([0.0, 2 * 21.5 * 7.5, 2 * 21.5 * 4.5, 0.0, 0.0, 2 * 21.5 * 2.5])
    assert torch.allclose(proposal.w.grad, expected)


def test_unfolded_loss_unused_rows_get_zero_grad():
    proposal = TableProposal([0.5] * 6, num_proposals=2)
    final = unfold_proposals(proposal, torch.zeros(1, 2, 2), torch.tensor([[0, 1, 1]]), RATES)
    unfolded_proposal_loss(final, torch.ones_like(final)).backward()
    grad = proposal.w.grad
    assert all(grad[i] != 0 for i in (0, 3, 5))
    assert all(grad[i] == 0 for i in (1, 2, 4))


def test_rollout_picks_argmin_and_steps_states():
    q = FixedQ([[[3.0, 1.0, 2.0], [0.5, 4.0, 0.7]],
                [[3.0, 1.0, 2.0], [9.0, 8.0, 0.1]],
                [[0.0, 1.0, 2.0], [0.5, 4.0, 0.7]]])
    proposal = ConstantPerSelection()
    agent = FakeAgent(q, Forbidden(), proposal)
    goals = torch.zeros(2, 1, 1, 1)
    goals[1] = 1.0
    out = goal_conditioned_rollout(agent, torch.zeros(1, 1, 1), goals, RATES, kappa=0.0, sigma=1.0)
    assert out.selections.tolist() == [[1, 1, 0], [0, 2, 0]]
    # row 0: y = 2, 2, 1 -> 2, 3, 3 + 1/3; row 1: y = 1, 3, 1 -> 1, 2.5, 2.5 + 1/3
    expected = torch.tensor([[0.0, 2.0, 3.0, 10.0 / 3.0], [0.0, 1.0, 2.5, 17.0 / 6.0]])
    assert torch.allclose(out.states.view(2, 4), expected)
    assert torch.allclose(out.final_loss, torch.tensor([(10.0 / 3.0) ** 2 / 2, (11.0 / 6.0) ** 2 / 2]))


def test_rollout_passes_steps_and_goals():
    q = FixedQ([[[0.0, 1.0]]] * 3)
    agent = FakeAgent(q, Forbidden(), ConstantPerSelection())
    goals = torch.full((1, 1, 2, 2), 0.5)
    goal_conditioned_rollout(agent, torch.zeros(1, 2, 2), goals, RATES, kappa=0.0, sigma=1.0)
    assert [s.tolist() for s in q.steps] == [[0], [1], [2]]
    assert all(torch.equal(g, goals) for g in q.goals)
    assert [s.tolist() for s, _ in agent.proposal.calls] == [[0], [1], [2]]


def test_malus_equal_q_picks_least_likely():
    q = torch.tensor([[1.0, 1.0, 1.0]])
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    assert goal_conditioned_selection(q, logits, kappa=0.05).tolist() == [2]


def test_malus_zero_kappa_keeps_q_argmin():
    q = torch.tensor([[1.0, 1.02, 1.5]])
    logits = torch.tensor([[10.0, -10.0, -10.0]])
    assert goal_conditioned_selection(q, logits, kappa=0.0).tolist() == [0]
    assert goal_conditioned_selection(q, logits, kappa=0.05).tolist() == [1]


def test_malus_small_kappa_keeps_q_preference():
    q = torch.tensor([[1.0, 1.1]])
    logits = torch.log(torch.tensor([[0.9, 0.1]]))
    # 1.0 + 0.01 log 0.9 = 0.9989 < 1.1 + 0.01 log 0.1 = 1.077
    assert goal_conditioned_selection(q, logits, kappa=0.01).tolist() == [0]


def test_malus_large_kappa_flips_to_rare_selection():
    q = torch.tensor([[1.0, 1.1]])
    logits = torch.log(torch.tensor([[0.9, 0.1]]))
    # 1.0 + 0.1 log 0.9 = 0.989 > 1.1 + 0.1 log 0.1 = 0.870
    assert goal_conditioned_selection(q, logits, kappa=0.1).tolist() == [1]


def test_rollout_with_malus_uses_selection_net():
    q = FixedQ([[[1.0, 1.0, 1.0]]] * 3)
    selection = FixedLogits([math.log(0.1), math.log(0.6), math.log(0.3)])
    agent = FakeAgent(q, selection, ConstantPerSelection())
    out = goal_conditioned_rollout(agent, torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, 1), RATES, kappa=0.05,
                                   sigma=1.0)
    assert out.selections.tolist() == [[0, 0, 0]]


def test_greedy_reconstruction_has_no_malus():
    q = FixedQ([[[1.0, 1.01]]] * 3)
    agent = FakeAgent(q, Forbidden(), ConstantPerSelection())
    out = greedy_reconstruction(agent, torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, 1), RATES, sigma=1.0)
    assert out.selections.tolist() == [[0, 0, 0]]


def test_s_agent_sample_only_nonzero_probability():
    logits = [[-math.inf, 0.0, -math.inf, -math.inf],
              [0.0, -1e9, -1e9, 0.0],
              [-1e9, -math.inf, 0.0, -1e9]]
    gen = torch.Generator().manual_seed(0)
    out = s_agent_sample(ConstantPerSelection(), FixedLogits(logits), torch.zeros(1, 1, 1), 200, RATES, gen)
    assert set(out.selections[:, 0].tolist()) == {1}
    assert set(out.selections[:, 1].tolist()) == {0, 3}
    assert set(out.selections[:, 2].tolist()) == {2}


def test_s_agent_sample_states_follow_choices():
    logits = [[0.0, 0.0, -math.inf]] * 3
    gen = torch.Generator().manual_seed(1)
    out = s_agent_sample(ConstantPerSelection(), FixedLogits(logits), torch.zeros(1, 1, 1), 50, RATES, gen)
    y = out.selections.float() + 1.0
    x = torch.zeros(50)
    for h in range(3):
        x = x + RATES[h] * y[:, h]
        assert torch.allclose(out.states[:, h + 1].view(50), x)
    assert torch.isnan(out.final_loss).all()


def test_s_agent_sample_seeded_reproducible():
    logits = [[0.0, 0.5, 1.0, -0.5]] * 3
    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return s_agent_sample(ConstantPerSelection(), FixedLogits(logits), torch.zeros(1, 2, 2), 64, RATES, gen)
    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(a.selections, b.selections) and torch.equal(a.states, b.states)
    assert not torch.equal(a.selections, c.selections)
