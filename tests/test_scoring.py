"""The candidate-scoring seam (common/method/scoring.py) and the afterstate GC-agent, against hand-computed values:
the prior term, the posterior draw, a learned value's argmin, the exact last step, the afterstate Double-DQN
target and the demonstrator's margin loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.errors import ConfigError
from common.method.config import ActingConfig, LearningConfig, MDPConfig, NetworkConfig
from common.method.lookahead import gc_agent_rollout, lookahead_rollout
from common.method.losses import afterstate_targets, demonstration_margin_loss
from common.method.networks import GoalValueNet, VAgent
from common.method.scoring import CandidateScoring, distance_to_goal, posterior
from evaluation.inference import available_encoders, reconstruct
from learner.learning import Learner
from tests.test_lookahead import RATES, TRAP, StepTable

ZERO, ONE = torch.zeros(1, 1, 1), torch.ones(1, 1, 1, 1)


class FixedLogits(nn.Module):
    """S-select with the same logits in every state and step."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, state, step):
        return self.logits.expand(state.shape[0], -1).clone()


class FarthestIsBest(nn.Module):
    """A value net that ranks candidates by minus their distance: its argmin is the farthest candidate."""

    def forward(self, state, step, goal):
        return -(state - goal).pow(2).flatten(1).mean(dim=1)


def test_without_prior_the_score_is_the_distance_and_the_argmin_is_kept():
    out = lookahead_rollout(StepTable(TRAP), ZERO, ONE, RATES, sigma=1.0, scoring=CandidateScoring())
    assert out.selections.tolist() == [[0, 0]]  # 0.9 is nearer 1.0 than 0.5; then 1.2 nearer than 1.4


def test_a_strong_prior_follows_the_s_agent_and_a_weak_one_the_distance():
    prefers_second = FixedLogits([0.0, 3.0])  # S-select: selection 1 with probability 0.95
    strong = CandidateScoring(prior_weight=1.0, selection=prefers_second)
    weak = CandidateScoring(prior_weight=1e-4, selection=prefers_second)
    assert lookahead_rollout(StepTable(TRAP), ZERO, ONE, RATES, 1.0, scoring=strong).selections.tolist() == [[1, 1]]
    assert lookahead_rollout(StepTable(TRAP), ZERO, ONE, RATES, 1.0, scoring=weak).selections.tolist() == [[0, 0]]


def test_prior_cost_is_minus_kappa_log_s_select():
    scoring = CandidateScoring(prior_weight=0.5, selection=FixedLogits([0.0, np.log(3.0)]))
    cost = scoring.prior_cost(torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long), 2)
    assert cost.tolist() == [pytest.approx([-0.5 * np.log(0.25), -0.5 * np.log(0.75)])] * 2


def test_stochastic_choice_draws_from_the_posterior():
    torch.manual_seed(0)
    scores = torch.tensor([[0.0, 0.01, 0.03]]).expand(20_000, 3)
    draws = CandidateScoring(prior_weight=0.01, stochastic=True).choose(scores, 1).squeeze(1)
    expected = posterior(scores[:1], 0.01)[0]  # softmax(-score / kappa') = e^0, e^-1, e^-3 normalised
    by_hand = torch.tensor([1.0, np.exp(-1), np.exp(-3)], dtype=torch.float32) / float(1 + np.exp(-1) + np.exp(-3))
    assert torch.allclose(expected, by_hand)
    frequencies = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert torch.allclose(frequencies, expected, atol=0.015)


def test_stochastic_needs_a_temperature_and_a_single_beam():
    with pytest.raises(ConfigError, match="acting.stochastic needs acting.prior_weight > 0"):
        ActingConfig(behaviour="lookahead", stochastic=True)
    with pytest.raises(ConfigError, match="beam_width = 1"):
        ActingConfig(behaviour="lookahead", stochastic=True, prior_weight=0.01, beam_width=2)


def test_acting_picks_the_argmin_of_the_learned_value_before_the_last_step_and_the_exact_loss_at_it():
    table = [[0.9, 0.5], [0.1, 0.2]]  # goal 1.0, rates 1, 1
    out = lookahead_rollout(StepTable(table), ZERO, ONE, RATES, 1.0, scoring=CandidateScoring(value=FarthestIsBest()))
    # step 1: the value net's argmin is the farther candidate 0.5; step 2 (the last): the exact loss picks 0.7
    assert out.selections.tolist() == [[1, 1]] and torch.allclose(out.states.view(-1), torch.tensor([0.0, 0.5, 0.7]))


def test_the_last_step_values_are_the_exact_distance_whatever_the_value_net():
    candidates, goals = torch.randn(3, 4, 1, 2, 2), torch.randn(3, 1, 2, 2)
    scoring = CandidateScoring(value=FarthestIsBest())
    assert torch.equal(scoring.values(candidates, 5, goals, horizon=5), distance_to_goal(candidates, goals))
    assert not torch.allclose(scoring.values(candidates, 4, goals, horizon=5), distance_to_goal(candidates, goals))


def test_afterstate_behaviour_acts_through_the_agent_value_net():
    mdp = MDPConfig(horizon=2, num_proposals=2, alphas=(1.0, 1.0), sigma=1.0)

    class Agent(nn.Module):
        def __init__(self):
            super().__init__()
            self.proposal, self.goal_value, self.selection = StepTable([[0.9, 0.5], [0.1, 0.2]]), FarthestIsBest(), None

    acting = ActingConfig(behaviour="afterstate")
    assert gc_agent_rollout(Agent(), ZERO, torch.ones(2, 1, 1, 1), RATES, mdp, acting).selections.tolist() == [[1, 1]] * 2
    lookahead = ActingConfig(behaviour="lookahead")
    assert gc_agent_rollout(Agent(), ZERO, torch.ones(1, 1, 1, 1), RATES, mdp, lookahead).selections.tolist() == [[0, 0]]


def test_value_net_starts_as_the_distance_so_the_afterstate_agent_starts_as_the_lookahead():
    mdp, net = MDPConfig(horizon=3, num_proposals=4), NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4)
    value = GoalValueNet((1, 8, 8), mdp, net)
    state, goal = torch.randn(5, 1, 8, 8), torch.randn(5, 1, 8, 8)
    assert torch.allclose(value(state, torch.ones(5, dtype=torch.long), goal), (state - goal).pow(2).mean((1, 2, 3)))
    agent = VAgent((1, 8, 8), mdp, net, value=True).eval()
    assert available_encoders(agent) == ("q", "lookahead", "afterstate")
    rates, x1 = torch.tensor(mdp.rates()), torch.zeros(1, 8, 8)
    same = [reconstruct(agent, x1, rates, goal, encoder=e).codes for e in ("lookahead", "afterstate")]
    assert torch.equal(*same)


def test_afterstate_target_by_hand():
    bootstrap, distance = torch.tensor([0.3, 0.7, 0.2]), torch.tensor([0.05, 0.06, 0.07])
    out = afterstate_targets(bootstrap, distance, torch.tensor([False, True, False]))
    assert out.tolist() == pytest.approx([0.3, 0.06, 0.2])


def test_value_update_regresses_on_the_target_net_value_of_the_next_afterstate_and_the_exact_last_loss():
    torch.manual_seed(0)
    mdp, net = MDPConfig(horizon=3, num_proposals=4), NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4)
    agent = VAgent((1, 8, 8), mdp, net, value=True)
    goals = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)  # both goals all +1 on [-1, 1]
    learner = Learner(agent, mdp, LearningConfig(q_lr=1e-2), goals, torch.zeros(1, 8, 8), torch.device("cpu"),
                      train_q=False)
    with torch.no_grad():
        learner.target_value.head.bias.fill_(0.5)  # the target net's values: distance + 0.5
    rng = np.random.default_rng(0)
    batch = {"state": rng.normal(size=(2, 1, 8, 8)).astype(np.float32), "step": np.array([1, 2], np.int16),
             "selection": np.zeros(2, np.int16), "next_state": np.zeros((2, 1, 8, 8), np.float32),
             "loss": np.zeros(2, np.float32), "goal_index": np.arange(2)}
    # row 0 (h = 1, next afterstate x_3 is not the last): 1.0 (distance of zeros to +1) + 0.5; row 1 (h = 2 = H - 1,
    # next is x_{H+1}): the exact per-pixel loss, 1.0
    expected = torch.tensor([1.5, 1.0])
    state, step, goal = torch.from_numpy(batch["state"]), torch.tensor([1, 2]), learner._goals(np.arange(2))
    with torch.no_grad():
        before = float((agent.goal_value(state, step, goal) - expected).pow(2).mean())
    for _ in range(30):
        learner.step(type("S", (), {"proposal_sequences": None, "selections": None, "gc_transitions": batch})())
        with torch.no_grad():
            learner.target_value.head.bias.fill_(0.5)  # hold the target fixed against the Polyak update
            learner.target_value.head.weight.zero_()
    with torch.no_grad():
        after = float((agent.goal_value(state, step, goal) - expected).pow(2).mean())
    assert after < before / 10 and learner.counts.value == 30 and learner.counts.q == 0


def test_demonstration_margin_loss_by_hand():
    q = torch.tensor([[0.30, 0.10, 0.50], [0.10, 0.40, 0.20]])
    demonstrated = torch.tensor([0, 0])
    # row 0: Q(a_E) = 0.3, min(0.3, 0.1 - 0.05, 0.5 - 0.05) = 0.05 -> 0.25; row 1: min(0.1, 0.35, 0.15) = 0.1 -> 0
    assert float(demonstration_margin_loss(q, demonstrated, 0.05)) == pytest.approx(0.125)


def test_hybrid_rows_follow_the_s_agent_for_their_prefix_then_the_scored_choice():
    torch.manual_seed(0)
    table = [[0.9, 0.5], [0.3, 0.5], [0.1, 0.4]]  # goal 1.0, rates 1, 1, 1
    s_select = FixedLogits([-20.0, 20.0])  # the S-agent draws selection 1
    scoring = CandidateScoring(selection=s_select, prefix_steps=torch.tensor([0, 1, 2]))
    out = lookahead_rollout(StepTable(table), ZERO, torch.ones(3, 1, 1, 1), torch.ones(3), 1.0, scoring=scoring)
    # row 0: the lookahead throughout (0.9, 1.2, then 1.3 vs 1.6 -> 0); row 1: S-agent 0.5, then nearest: 1.0, 1.1;
    # row 2: S-agent 0.5, 1.0, then the nearest of 1.1 and 1.4
    assert out.selections.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 0]]


def test_hybrid_prefix_lengths_cover_one_to_h_minus_one_for_the_asked_share():
    torch.manual_seed(0)
    from common.method.scoring import hybrid_prefix_steps

    steps = hybrid_prefix_steps(1000, 8, 0.25)
    assert (steps[:750] == 0).all() and set(steps[750:].tolist()) == set(range(1, 8))
    with pytest.raises(ConfigError, match="s_prefix_fraction needs acting.beam_width = 1"):
        ActingConfig(behaviour="lookahead", s_prefix_fraction=0.5, beam_width=2)


def test_sampling_temperature_and_top_k_shape_s_select():
    from common.method.rollout import selection_distribution

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.allclose(selection_distribution(logits), torch.softmax(logits, dim=1))
    top2 = selection_distribution(logits, top_k=2)
    assert torch.allclose(top2, torch.tensor([[np.e / (np.e + 1), 1 / (np.e + 1), 0.0, 0.0]], dtype=torch.float32))
    cold = selection_distribution(logits, temperature=0.05)
    assert cold[0, 0] > 0.999  # towards the argmax


def test_lookahead_posterior_is_the_likelihood_softmax_and_soft_targets_train_s_select_towards_it():
    from common.method.scoring import posterior_temperature

    out = lookahead_rollout(StepTable(TRAP), ZERO, ONE, RATES, sigma=1.0, scoring=CandidateScoring())
    t = posterior_temperature(0.0, 1.0, 1)  # the bound's 2 sigma^2 / d with d = 1 pixel
    first = torch.softmax(-torch.tensor([0.1 ** 2, 0.5 ** 2]) / t, dim=0)  # distances of 0.9 and 0.5 to 1.0
    assert out.posteriors.shape == (1, 2, 2) and torch.allclose(out.posteriors[0, 0], first)
    mdp, net = MDPConfig(horizon=2, num_proposals=4), NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4)
    torch.manual_seed(0)
    agent = VAgent((1, 8, 8), mdp, net)
    learner = Learner(agent, mdp, LearningConfig(selection_lr=1e-2, selection_targets="soft"),
                      torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8), torch.device("cpu"))
    target = np.array([[0.5, 0.3, 0.2, 0.0]] * 8, np.float32)
    batch = {"state": np.zeros((8, 1, 8, 8), np.float32), "step": np.zeros(8, np.int16),
             "selection": np.zeros(8, np.int16), "posterior": target}
    for _ in range(100):
        learner.update_selection(batch)
    with torch.no_grad():
        learned = torch.softmax(agent.selection(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long)), dim=1)
    assert torch.allclose(learned[0], torch.from_numpy(target[0]), atol=0.03)
