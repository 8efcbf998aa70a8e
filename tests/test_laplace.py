"""The Laplace last step (mdp.likelihood = "laplace", an extension): an L1 goal loss in place of the paper's Gaussian.

Checked against hand-computed values: the loss itself; that the lookahead, acting and the evaluation encoder all
score candidates by the likelihood's own distance (a case where the L1- and L2-nearest candidates differ); that
the unfolded proposal update then fits the median of goals that share a code where the paper's fits their mean;
and that bad settings are refused in one line.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from common.errors import ConfigError
from common.method.config import ActingConfig, ExperimentConfig, LearningConfig, MDPConfig, NetworkConfig
from common.method.lookahead import gc_agent_rollout, lookahead_rollout
from common.method.losses import unfolded_proposal_loss
from common.method.mdp import goal_loss
from common.method.networks import VAgent
from common.method.rollout import unfold_proposals
from common.method.scoring import CandidateScoring, posterior_temperature
from evaluation.inference import encoder_of, reconstruct
from learner.learning import Learner


class ImageTable(nn.Module):
    """Proposal y = table[a] (an image) whatever the state and step: candidates with known distances."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)  # [A, C, H, W]
        self.num_proposals = self.table.shape[0]

    def forward(self, state, step, selection):
        return self.table[selection].clone()


# goal [0, 0]: candidate 0 = [0.6, 0.6] is nearer in squared distance (0.36 against 0.5), candidate 1 = [1, 0] in
# absolute distance (0.5 against 0.6): the two likelihoods pick different selections
SPLIT = [[[[0.6, 0.6]]], [[[1.0, 0.0]]]]
GOAL = torch.zeros(1, 1, 1, 2)


class Agent(nn.Module):
    def __init__(self, proposal):
        super().__init__()
        self.proposal, self.selection, self.goal_q = proposal, None, None


def test_the_laplace_goal_loss_by_hand():
    final, goal = torch.tensor([[[[0.5, -1.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    assert goal_loss(final, goal, 0.5, "sum", "laplace").item() == pytest.approx((0.5 + 2.0) / 0.5)
    assert goal_loss(final, goal, 0.5, "mean", "laplace").item() == pytest.approx(1.25 / 0.5)
    assert goal_loss(final, goal, 0.5, "sum").item() == pytest.approx((0.25 + 4.0) / 0.5)  # the paper's, unchanged
    assert unfolded_proposal_loss(final, goal, "laplace").item() == pytest.approx(1.25)
    assert posterior_temperature(0.0, 0.5, 784, "laplace") == pytest.approx(0.5 / 784)


@pytest.mark.parametrize("likelihood, chosen, loss", [("gaussian", 0, 0.36 / 2), ("laplace", 1, 0.5 / 1.0)])
def test_every_candidate_scorer_uses_the_likelihood_distance(likelihood, chosen, loss):
    x1, rates = torch.zeros(1, 1, 2), torch.ones(1)
    scoring = CandidateScoring(likelihood=likelihood)
    out = lookahead_rollout(ImageTable(SPLIT), x1, GOAL, rates, sigma=1.0, scoring=scoring)
    assert out.selections.tolist() == [[chosen]] and out.final_loss.item() == pytest.approx(loss)
    mdp = MDPConfig(horizon=1, num_proposals=2, alphas=(1.0,), sigma=1.0, loss_reduction="mean", likelihood=likelihood)
    acting = gc_agent_rollout(Agent(ImageTable(SPLIT)), x1, GOAL, rates, mdp, ActingConfig(behaviour="lookahead"))
    assert acting.selections.tolist() == [[chosen]] and acting.final_loss.item() == pytest.approx(loss)
    config = ExperimentConfig(mdp=mdp, acting=ActingConfig(behaviour="lookahead"))
    recon = reconstruct(Agent(ImageTable(SPLIT)), x1, rates, GOAL, **encoder_of(config))
    assert recon.codes.tolist() == [[chosen]]


@pytest.mark.parametrize("likelihood, expected", [("gaussian", -1 / 3), ("laplace", -1.0)])
def test_the_unfolded_update_fits_the_median_of_goals_sharing_a_code(likelihood, expected):
    """Three goals share one code: pixels -1, -1 and +1. The squared loss is minimised by their mean (-1/3), the
    absolute loss by their median (-1): the sharper image an MSE-trained decoder cannot give."""
    torch.manual_seed(0)
    mdp = MDPConfig(horizon=2, num_proposals=2, likelihood=likelihood)
    agent = VAgent((1, 8, 8), mdp, NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4))
    goals = torch.tensor([0, 0, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 8, 8).contiguous()
    learner = Learner(agent, mdp, LearningConfig(proposal_lr=1e-2, bf16=False), goals, torch.zeros(1, 8, 8),
                      torch.device("cpu"))
    batch = {"selections": np.zeros((3, 2), np.int16), "goal_index": np.arange(3)}
    for _ in range(300):
        learner.update_proposal(batch)
    with torch.no_grad():
        final = unfold_proposals(agent.proposal, learner.x1, torch.zeros(1, 2, dtype=torch.long), learner.rates)
    assert final.mean().item() == pytest.approx(expected, abs=0.08), final.mean().item()


def test_a_bad_likelihood_and_the_afterstate_agent_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="mdp.likelihood must be one of gaussian, laplace, got 'cauchy'"):
        MDPConfig(likelihood="cauchy")
    with pytest.raises(ConfigError, match="mdp.likelihood = 'laplace' needs acting.behaviour 'lookahead' or 'q'"):
        ExperimentConfig(mdp=MDPConfig(likelihood="laplace"), acting=ActingConfig(behaviour="afterstate"))


def test_a_config_without_the_setting_reads_as_the_papers_gaussian():
    saved = dataclasses.asdict(ExperimentConfig())
    del saved["mdp"]["likelihood"]  # a checkpoint written before the setting existed
    assert ExperimentConfig.from_dict(saved).mdp.likelihood == "gaussian"
