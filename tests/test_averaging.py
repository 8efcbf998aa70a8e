"""The averaged S-agent (learning.averaging_rate, an extension): a Polyak average of the proposal and selection
networks that sampling and evaluation read, while the GC-agent acts with the online weights.

Checked: the warm-up rate, the exact average after real updates, that checkpoints keep it and a resume continues it,
that `load_model` and the commands read either set of weights, and that codes name the weights they were made with.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import launch
from common.errors import ConfigError
from common.method.config import LearningConfig
from common.method.losses import averaging_rate
from common.method.presets import tiny
from common.storage.checkpoint import load_checkpoint
from evaluation.model import load_model
from learner.builder import Builder


def test_the_rate_warms_up_from_nearly_a_copy_then_holds_the_configured_one():
    rates = [averaging_rate(0.001, n) for n in (1, 10, 100, 1000, 10_000, 100_000)]
    assert rates[0] == pytest.approx(9 / 11) and rates[-1] == 0.001
    assert all(a > b for a, b in zip(rates[:-1], rates[1:-1] + [0.0]))  # falls until it reaches the rate
    assert averaging_rate(0.5, 1) == pytest.approx(9 / 11) and averaging_rate(0.5, 100) == 0.5


@pytest.mark.parametrize("bad", [-0.1, 1.5, "fast"])
def test_a_bad_rate_is_refused_naming_it(bad):
    with pytest.raises(ConfigError, match=r"learning.averaging_rate must be a number in \(0, 1\], got"):
        LearningConfig(averaging_rate=bad)


def tiny_learner(rate: float):
    config = tiny()
    config = dataclasses.replace(config, learning=dataclasses.replace(config.learning, averaging_rate=rate))
    builder = Builder(config, (1, 28, 28), 16)
    goals = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    return builder.make_learner(builder.make_agent(seed=0), goals, torch.zeros(1, 28, 28), torch.device("cpu"))


def proposal_batch(learner, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mdp = learner.mdp
    return {"selections": rng.integers(0, mdp.num_proposals, (8, mdp.horizon)), "goal_index": rng.integers(0, 16, 8)}


def parameters(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_the_averaged_proposal_network_is_the_polyak_average_of_the_online_one():
    learner = tiny_learner(0.3)
    averaged = parameters(learner.averaged.proposal)
    selection_before = parameters(learner.averaged.selection)
    for update in (1, 2, 3):
        learner.update_proposal(proposal_batch(learner, update))
        rate = max(0.3, 9 / (10 + update))
        averaged = [a + rate * (o - a) for a, o in zip(averaged, parameters(learner.agent.proposal))]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(averaged, learner.averaged.proposal.parameters()))
    assert not all(torch.equal(a, o) for a, o in zip(averaged, learner.agent.proposal.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(selection_before, learner.averaged.selection.parameters()))
    assert learner.averaged.goal_q is learner.agent.goal_q and learner.evaluation_agent is learner.averaged


def test_without_averaging_there_is_one_agent():
    learner = tiny_learner(0.0)
    learner.update_proposal(proposal_batch(learner, 1))
    assert learner.averaged is None and learner.evaluation_agent is learner.agent
    assert "averaged" not in learner.state_dict()


def train_tiny(data_dir, checkpoints, updates: int, *extra) -> None:
    assert launch.main(["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir), "--num-goals",
                        "256", "--checkpoint-dir", str(checkpoints), "--total-updates", str(updates),
                        "--set", "learning.averaging_rate=0.05", *extra]) == 0


@pytest.fixture(scope="module")
def averaged_run(data_dir, tmp_path_factory):
    """A tiny single-process run of 30 updates with averaging on."""
    path = tmp_path_factory.mktemp("averaged")
    train_tiny(data_dir, path, 30)
    return path


def test_checkpoints_keep_both_and_load_model_reads_either(averaged_run):
    state = load_checkpoint(averaged_run).learner_state()["learner"]
    averaged, online = load_model(averaged_run), load_model(averaged_run, weights="online")
    assert averaged.weights == "averaged" and online.weights == "online"
    for kind in ("proposal", "selection"):
        saved = state["averaged"][kind]
        assert all(torch.equal(v, saved[k]) for k, v in getattr(averaged.agent, kind).state_dict().items())
        online_saved = {k[len(kind) + 1:]: v for k, v in state["agent"].items() if k.startswith(kind + ".")}
        assert all(torch.equal(v, online_saved[k]) for k, v in getattr(online.agent, kind).state_dict().items())
        assert not all(torch.equal(v, saved[k]) for k, v in getattr(online.agent, kind).state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(averaged.agent.goal_q.parameters(), online.agent.goal_q.parameters()))


def test_a_learner_state_restores_the_average_and_one_without_it_starts_from_the_online_weights():
    learner = tiny_learner(0.3)
    for update in (1, 2):
        learner.update_proposal(proposal_batch(learner, update))
    state = learner.state_dict()
    restored = tiny_learner(0.3)
    restored.load_state_dict(state)
    pairs = zip(restored.averaged.proposal.parameters(), learner.averaged.proposal.parameters())
    assert all(torch.equal(a, b) for a, b in pairs)
    assert restored.averaged.goal_q is restored.agent.goal_q
    state.pop("averaged")  # a checkpoint of a run without averaging, resumed with it on
    fresh = tiny_learner(0.3)
    fresh.load_state_dict(state)
    pairs = zip(fresh.averaged.proposal.parameters(), learner.agent.proposal.parameters())
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_resumed_run_keeps_averaging(averaged_run, data_dir, tmp_path):
    import shutil

    copy = tmp_path / "resumed"
    shutil.copytree(averaged_run, copy)
    train_tiny(data_dir, copy, 40, "--resume")
    after = load_checkpoint(copy).learner_state()["learner"]
    assert after["counts"]["steps"] == 40 and set(after["averaged"]) == {"proposal", "selection"}


def test_codes_name_the_weights_that_made_them(averaged_run, data_dir, tmp_path, capsys):
    codes = tmp_path / "codes.npz"
    assert launch.main(["encode", "--checkpoint", str(averaged_run), "--data-dir", str(data_dir), "--count", "8",
                        "--output", str(codes)]) == 0
    assert launch.main(["decode", "--checkpoint", str(averaged_run), "--codes", str(codes), "--output",
                        str(tmp_path / "dec")]) == 0
    capsys.readouterr()
    code = launch.main(["decode", "--checkpoint", str(averaged_run), "--codes", str(codes), "--weights", "online"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "encoded with this checkpoint's averaged weights" in err[0], err
    assert "--weights averaged" in err[0]


def test_the_sampling_sweep_scores_either_weights_with_their_reconstructions(averaged_run, data_dir, tmp_path):
    from bench import sampling_sweep
    from evaluation.inference import encoder_of, reconstruct
    from common.device import cpu_has_native_bf16
    from common.storage.data import load_goals

    test = load_goals("mnist", data_dir, "test").images[:16]
    found = {}
    for weights in ("online", "averaged"):
        output = tmp_path / weights
        assert sampling_sweep.main(["--checkpoint", str(averaged_run), "--data-dir", str(data_dir), "--weights",
                                    weights, "--reconstructions", "--num-test", "16", "--fid-samples", "16",
                                    "--fid-reference", "32", "--temperatures", "1", "--output", str(output)]) == 0
        found[weights] = json.loads((output / "sweep.json").read_text())
        model = load_model(averaged_run, weights=weights)
        direct = reconstruct(model.agent, model.x1, model.rates, test, 500, bf16=cpu_has_native_bf16(),
                             **encoder_of(model.config))  # at the protocol's precision
        assert found[weights]["weights"] == weights
        assert found[weights]["recon_mse"] == pytest.approx(direct.mse, rel=1e-5)
        assert found[weights]["recon_fid"] > 0 and found[weights]["rows"][0]["sample_fid"] > 0
    assert found["online"]["recon_mse"] != found["averaged"]["recon_mse"]
