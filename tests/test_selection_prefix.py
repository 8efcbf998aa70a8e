"""The prefix-reading S-select-net (extension, issue 19): causal, refused where no prefix reaches it, learning from
whole code sequences what the paper's network cannot see, and usable end to end (train, sample, evaluate)."""

from __future__ import annotations

import math

import pytest
import torch

import launch
from common.errors import ConfigError
from common.method.config import ExperimentConfig, LearningConfig, MDPConfig, NetworkConfig
from common.method.networks import CodePrefixEncoder, SelectionNet, VAgent
from common.method.presets import tiny
from common.method.rollout import s_agent_sample
from evaluation.inference import s_agent_cross_entropy
from learner.learning import Learner

MDP = MDPConfig(horizon=3, num_proposals=4)
NET = NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4, selection_prefix=True)


def test_the_prefix_features_read_only_the_selections_before_the_step():
    torch.manual_seed(0)
    encoder = CodePrefixEncoder(MDP)
    prefix = torch.tensor([[1, 2, 3], [1, 2, 0]])
    at_2 = encoder(prefix, torch.tensor([2, 2]))
    assert torch.allclose(at_2[0], at_2[1])  # a_3 differs, unseen at h = 2 (0-based)
    at_3 = encoder(prefix, torch.tensor([3, 3]))
    assert not torch.allclose(at_3[0], at_3[1])
    assert torch.equal(encoder(prefix, torch.tensor([0, 0])), torch.zeros(2, encoder.features))  # nothing yet


def test_a_prefix_net_starts_as_the_papers_and_refuses_a_call_without_a_prefix():
    torch.manual_seed(0)
    net = SelectionNet((1, 8, 8), MDP, NET)
    state, step = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    plain = net.head(net.trunk(torch.cat([state, net.embedding(step)], dim=1)))
    assert torch.allclose(net(state, step, torch.tensor([[3, 1, 0], [0, 2, 1]])), plain)
    with pytest.raises(ValueError, match="pass prefix"):
        net(state, step)


@pytest.mark.parametrize("overrides, message", [
    ({"network": {"selection_prefix": True}}, "learning.selection_source = 'sequences'"),
    ({"network": {"selection_prefix": True}, "learning": {"selection_source": "sequences"},
      "acting": {"prior_weight": 0.001}}, "acting.prior_weight = 0, got 0.001"),
    ({"network": {"selection_prefix": True}, "learning": {"selection_source": "sequences"},
      "acting": {"s_prefix_fraction": 0.25}}, "acting.s_prefix_fraction = 0, got 0.25"),
    ({"learning": {"selection_source": "sequences", "selection_targets": "soft"}}, "selection_targets = 'hard'"),
    ({"learning": {"selection_source": "fresh"}}, "learning.selection_source"),
])
def test_settings_a_prefix_cannot_reach_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        ExperimentConfig.from_dict(overrides)
    assert "\n" not in str(error.value)


def _sequence_learner(prefix: bool) -> tuple[Learner, VAgent]:
    torch.manual_seed(0)
    net = NetworkConfig((8, 8, 16, 16), (8, 8, 16), 4, selection_prefix=prefix)
    agent = VAgent((1, 8, 8), MDP, net)
    learning = LearningConfig(selection_lr=1e-2, selection_source="sequences")
    learner = Learner(agent, MDP, learning, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8),
                      torch.device("cpu"))
    return learner, agent


def _copy_codes(count: int, generator: torch.Generator) -> torch.Tensor:
    """Codes whose second selection repeats the first: [count, 3] long."""
    first = torch.randint(0, 4, (count, 1), generator=generator)
    return torch.cat([first, first, torch.randint(0, 4, (count, 1), generator=generator)], dim=1)


@pytest.mark.parametrize("prefix", [True, False])
def test_learning_from_sequences_finds_what_only_the_prefix_tells(prefix):
    """States carry nothing here (all zero); a_2 = a_1. Only a prefix net can predict a_2: its cross-entropy at
    h = 2 falls far below uniform while the paper's network stays at it."""
    learner, agent = _sequence_learner(prefix)
    generator = torch.Generator().manual_seed(1)
    for _ in range(150):
        learner.update_selection_on_sequences(torch.zeros(32, 3, 1, 8, 8), _copy_codes(32, generator))
    codes = _copy_codes(256, generator)
    per_step = s_agent_cross_entropy(agent, torch.zeros(256, 4, 1, 8, 8), codes)
    assert learner.counts.selection == 150
    if prefix:
        assert per_step[1] < 0.25 * math.log(4), per_step
    else:
        assert per_step[1] > 0.9 * math.log(4), per_step


def test_a_sequences_learner_asks_replay_for_no_selections_and_reports_the_loss():
    learner, _ = _sequence_learner(True)
    assert learner.next_request().selections == 0 and learner.next_request().proposal_sequences > 0
    from buffers.tables import ReplaySample
    import numpy as np
    sequences = {"selections": np.array([[0, 1, 2], [3, 3, 3]], np.int16), "goal_index": np.array([0, 1])}
    losses = learner.step(ReplaySample(None, None, sequences))
    assert set(losses) == {"proposal", "selection"} and math.isfinite(losses["selection"])
    assert learner.counts.selection == 1 and learner.counts.proposal == 1


def test_s_agent_samples_with_a_prefix_net_are_reproducible():
    torch.manual_seed(0)
    agent = VAgent((1, 8, 8), MDP, NET)
    with torch.no_grad():
        agent.selection.prefix_head.weight.normal_()  # make the prefix matter
    rates = torch.full((3,), 0.5)
    draw = lambda: s_agent_sample(agent.proposal, agent.selection, torch.zeros(1, 8, 8), 16, rates,  # noqa: E731
                                  torch.Generator().manual_seed(3))
    with torch.inference_mode():
        first, second = draw(), draw()
    assert torch.equal(first.selections, second.selections) and first.states.shape == (16, 4, 1, 8, 8)


def test_a_prefix_run_trains_checkpoints_and_evaluates(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--set", "network.selection_prefix=true", "--set", "learning.selection_source=sequences"]
    code = launch.main(["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir),
                        "--num-goals", "128", "--total-updates", "40", "--checkpoint-dir", str(run),
                        "--eval-every", "0", *flags])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert tiny().network.selection_prefix is False  # the presets keep the paper's S-select-net
    checkpoint = sorted(run.glob("update-*"))[-1]
    code = launch.main(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(data_dir),
                        "--num-samples", "16", "--num-test", "16", "--no-fid", "--output", str(tmp_path / "eval")])
    out = capsys.readouterr()
    assert code == 0, out.err


def test_set_items_that_need_each_other_load_in_either_order(data_dir):
    from deploy.cli import parse_train
    prefix = ["network.selection_prefix=true", "learning.selection_source=sequences"]
    posterior = ["acting.stochastic=true", "acting.prior_weight=0.001"]
    for items in (prefix, prefix[::-1], posterior, posterior[::-1]):
        flags = [flag for item in items for flag in ("--set", item)]
        command = parse_train(["--preset", "tiny", "--data-dir", str(data_dir), *flags], "test")
        assert command.config.network.selection_prefix == (items in (prefix, prefix[::-1]))


def test_settings_that_need_each_other_load_from_a_config_file_and_set(data_dir, tmp_path):
    from deploy.cli import parse_train
    config_file = tmp_path / "prefix.yaml"
    config_file.write_text("network:\n  selection_prefix: true\n")
    flags = ["--preset", "tiny", "--data-dir", str(data_dir), "--config", str(config_file)]
    command = parse_train([*flags, "--set", "learning.selection_source=sequences"], "test")
    assert command.config.network.selection_prefix and command.config.learning.selection_source == "sequences"
    with pytest.raises(ConfigError, match="selection_source"):  # the file alone still needs its partner
        parse_train(flags, "test")
    with pytest.raises(ConfigError, match=f"{config_file}: unknown setting 'network.prefix'"):
        config_file.write_text("network:\n  prefix: true\n")
        parse_train(flags, "test")
