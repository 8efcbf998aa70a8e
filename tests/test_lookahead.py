"""The lookahead GC-agent (extension) and the all-action Q targets, against hand-computed values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import common.method.lookahead as lookahead_module
from buffers.tables import SampleRequest
from common.method.config import ActingConfig, LearningConfig, MDPConfig, NetworkConfig
from common.errors import EvaluationError
from evaluation.inference import decode, reconstruct
from common.method.lookahead import gc_agent_rollout, lookahead_rollout, proposal_fan_out
from common.method.losses import all_action_targets
from common.method.networks import VAgent
from common.method.rollout import unfold_proposals
from learner.learning import Learner


class StepTable(nn.Module):
    """Proposal y = table[h][a] everywhere, whatever the state: choices with known consequences."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)  # [H, A]
        self.num_proposals = self.table.shape[1]

    def forward(self, state, step, selection):
        return self.table[step, selection].view(-1, 1, 1, 1).expand_as(state).clone()


class PreferLast(nn.Module):
    """Q-values that make the paper's rule pick the last selection at every step."""

    def __init__(self, num):
        super().__init__()
        self.num = num

    def forward(self, state, step, goal):
        return -torch.arange(self.num, dtype=torch.float32).expand(state.shape[0], -1).clone()


class Agent(nn.Module):
    def __init__(self, proposal, goal_q=None, selection=None):
        super().__init__()
        self.proposal, self.goal_q, self.selection = proposal, goal_q, selection


# goal 1.0, rates 1, 1: greedy takes 0.9 then +0.3 (final 1.2); a beam of 2 finds 0.5 then +0.5 (exactly 1.0)
TRAP = [[0.9, 0.5], [0.3, 0.5]]
RATES = torch.tensor([1.0, 1.0])


def test_greedy_lookahead_takes_the_nearest_next_state():
    out = lookahead_rollout(StepTable(TRAP), torch.zeros(1, 1, 1), torch.ones(1, 1, 1, 1), RATES, sigma=1.0)
    assert out.selections.tolist() == [[0, 0]]
    assert torch.allclose(out.states.view(-1), torch.tensor([0.0, 0.9, 1.2]))
    assert torch.allclose(out.final_loss, torch.tensor([0.2 ** 2 / 2]))


def test_beam_of_two_finds_the_sequence_greedy_misses():
    out = lookahead_rollout(StepTable(TRAP), torch.zeros(1, 1, 1), torch.ones(1, 1, 1, 1), RATES, sigma=1.0,
                            beam_width=2)
    assert out.selections.tolist() == [[1, 1]]
    assert torch.allclose(out.states.view(-1), torch.tensor([0.0, 0.5, 1.0]))
    assert float(out.final_loss) == pytest.approx(0.0, abs=1e-12)


def test_wide_beam_is_exhaustive_search():
    torch.manual_seed(0)
    table = torch.randn(3, 3).tolist()
    goals = torch.randn(5, 1, 1, 1)
    rates = torch.tensor([1.0, 0.5, 1.0 / 3.0])
    out = lookahead_rollout(StepTable(table), torch.zeros(1, 1, 1), goals, rates, sigma=1.0, beam_width=100)
    codes = torch.cartesian_prod(*[torch.arange(3)] * 3)  # all 27 sequences
    finals = (torch.tensor(table)[torch.arange(3), codes] * rates).sum(dim=1)  # [27]
    best = (finals.unsqueeze(0) - goals.view(-1, 1)).abs().argmin(dim=1)
    assert out.selections.tolist() == codes[best].tolist()


@pytest.mark.parametrize("beam", [1, 3])
def test_lookahead_path_is_what_the_unfolded_network_gives(beam):
    mdp = MDPConfig(horizon=3, num_proposals=4)
    agent = VAgent((1, 8, 8), mdp, NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4)).eval()
    rates, x1 = torch.tensor(mdp.rates()), torch.zeros(1, 8, 8)
    goals = torch.rand(6, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        out = lookahead_rollout(agent.proposal, x1, goals, rates, sigma=1.0, beam_width=beam)
        states = [unfold_proposals(agent.proposal, x1, out.selections[:, :h], rates[:h]) for h in range(1, 4)]
    for h, state in enumerate(states, start=1):
        assert torch.allclose(out.states[:, h], state, atol=1e-5)
    assert torch.allclose(out.final_loss, (out.states[:, -1] - goals).pow(2).flatten(1).mean(1) / 2, atol=1e-6)


def test_fan_out_in_chunks_equals_one_call(monkeypatch):
    mdp = MDPConfig(horizon=2, num_proposals=4)
    proposal = VAgent((1, 8, 8), mdp, NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4)).proposal.eval()
    state, step = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 0, 1, 1])
    alpha = torch.tensor([1.0, 0.5, 1.0, 0.5, 0.5])
    with torch.no_grad():
        whole = proposal_fan_out(proposal, state, step, alpha)
        monkeypatch.setattr(lookahead_module, "FAN_OUT_ROWS", 8)  # two states per call
        chunked = proposal_fan_out(proposal, state, step, alpha)
        direct = state[3:4] + 0.5 * proposal(state[3:4], torch.tensor([1]), torch.tensor([2]))
    assert whole.shape == (5, 4, 1, 8, 8)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.allclose(whole[3, 2], direct[0], atol=1e-6)


def test_q_fraction_splits_the_batch_between_the_two_rules():
    agent = Agent(StepTable(TRAP), goal_q=PreferLast(2))
    mdp = MDPConfig(horizon=2, num_proposals=2, alphas=(1.0, 1.0), sigma=1.0)
    acting = ActingConfig(kappa=0.0, behaviour="lookahead", q_fraction=0.5)
    out = gc_agent_rollout(agent, torch.zeros(1, 1, 1), torch.ones(4, 1, 1, 1), RATES, mdp, acting)
    assert out.selections.tolist() == [[1, 1], [1, 1], [0, 0], [0, 0]]  # Q rule first, then the lookahead
    paper = gc_agent_rollout(agent, torch.zeros(1, 1, 1), torch.ones(2, 1, 1, 1), RATES, mdp,
                             dataclasses.replace(acting, behaviour="q"))
    assert paper.selections.tolist() == [[1, 1], [1, 1]]


def test_all_action_targets_exact_at_last_step_bootstrap_before():
    online = torch.tensor([[[3.0, 1.0], [0.0, 2.0]], [[5.0, 4.0], [1.0, 0.0]]])  # [B=2, A=2, A=2]
    target = torch.tensor([[[7.0, 8.0], [9.0, 6.0]], [[1.0, 2.0], [3.0, 4.0]]])
    final = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    out = all_action_targets(online, target, final, torch.tensor([False, True]))
    assert out.tolist() == [[8.0, 9.0], pytest.approx([0.3, 0.4])]


def test_reconstruct_with_lookahead_encoder_decodes_exactly():
    mdp = MDPConfig(horizon=3, num_proposals=4)
    agent = VAgent((1, 8, 8), mdp, NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4)).eval()
    rates, x1 = torch.tensor(mdp.rates()), torch.zeros(1, 8, 8)
    goals = torch.rand(5, 1, 8, 8) * 2 - 1
    recon = reconstruct(agent, x1, rates, goals, batch_size=2, keep_float=True, encoder="lookahead", beam_width=2)
    assert torch.equal(decode(agent, x1, rates, recon.codes), recon.finals)
    with pytest.raises(EvaluationError, match="encoder must be one of q, lookahead for this model, got 'vae'"):
        reconstruct(agent, x1, rates, goals, encoder="vae")


def test_all_action_q_update_fits_the_exact_last_step_losses():
    torch.manual_seed(0)
    mdp = MDPConfig(horizon=2, num_proposals=4, loss_reduction="mean")
    agent = VAgent((1, 8, 8), mdp, NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4))
    goals = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    learning = LearningConfig(q_lr=3e-3, q_target="all_actions")
    learner = Learner(agent, mdp, learning, goals, torch.zeros(1, 8, 8), torch.device("cpu"))
    batch = {"state": np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32),
             "step": np.ones(8, np.int16), "selection": np.zeros(8, np.int16),
             "next_state": np.zeros((8, 1, 8, 8), np.float32), "loss": np.zeros(8, np.float32),
             "goal_index": np.arange(8)}
    state, step, goal = torch.from_numpy(batch["state"]), torch.ones(8, dtype=torch.long), learner._goals(np.arange(8))
    exact = learner._all_action_targets(state, step, goal)  # [8, 4]: h = H, so the goal losses themselves

    def error() -> float:
        with torch.no_grad():
            return float((agent.goal_q(state, step, goal) - exact).pow(2).mean())

    before = error()
    for _ in range(60):
        learner.update_q(batch)
    assert learner.request_for(0) == SampleRequest(128, 128, 128)
    assert error() < before / 4, (before, error())
