"""The default recipe learns: on 64 fixed MNIST goals the candidate GC-agents leave the mean baseline.

Both candidate GC-agents are trained: the lookahead (the default's) and the afterstate agent (its value network
learned by Double-DQN, which must leave the mean too, acting by its own values, and move its values away from
the plain distance it starts from).

This guards what the project exists for. The budget is a number of learner updates, not seconds, so a
busy machine makes the test slower, never failing. Measured on a quiet 2-core Intel Xeon with AVX-512 and
native bf16 (small-lookahead with A = 32, seed 0, 400 updates in 111 s): reconstruction MSE 0.049 against the
goals' mean-image 0.252 (0.20x; the test asks below 0.7x), 64 distinct codes for the 64 goals (the test asks 32). The paper's rule
(tests/test_learning.py) stays at the mean on this budget.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.storage.data import load_goals
from evaluation.inference import encoder_of, reconstruct
from common.method.presets import small_lookahead
from common.method.rollout import s_agent_sample
from deploy.settings import RunOptions
from deploy.single_process import SingleProcessTrainer

NUM_GOALS = 64
UPDATES = 400
LEAVE_MEAN = 0.7  # the lookahead's reconstruction MSE must fall below 0.7x the goals' mean-image MSE
MIN_DISTINCT_CODES = 32  # of the 64 goals: a model at the mean gives every goal the same code


@pytest.fixture(scope="module", params=["lookahead", "afterstate"])
def trained(data_dir, request):
    goals = load_goals("mnist", data_dir).subset(NUM_GOALS)
    options = RunOptions(total_updates=UPDATES, seed=0, device="cpu", progress_every=30)
    config = small_lookahead()
    acting = dataclasses.replace(config.acting, behaviour=request.param)
    mdp = config.mdp if request.param == "lookahead" else dataclasses.replace(config.mdp, likelihood="gaussian")
    config = dataclasses.replace(config, acting=acting, mdp=mdp)  # the afterstate agent learns squared distances
    trainer = SingleProcessTrainer(config, goals, options)
    pixels = goals.goals(np.arange(NUM_GOALS))
    baseline = float((pixels - pixels.mean(dim=0)).pow(2).mean())
    summary = trainer.run()
    learner = trainer.learner
    after = reconstruct(learner.agent, learner.x1, learner.rates, pixels, **encoder_of(config))
    print(f"\n{request.param} learning: {summary.updates} updates in {summary.seconds:.0f}s; reconstruction MSE "
          f"{after.mse:.3f} (mean baseline {baseline:.3f}, {after.mse / baseline:.2f}x), "
          f"{len({tuple(c) for c in after.codes.tolist()})} distinct codes")
    return trainer, baseline, after


def test_lookahead_reconstruction_leaves_the_mean_baseline(trained):
    _, baseline, after = trained
    assert after.mse < LEAVE_MEAN * baseline, f"MSE {after.mse:.3f} vs mean baseline {baseline:.3f}"


def test_goals_get_distinct_codes(trained):
    _, _, after = trained
    assert len({tuple(c) for c in after.codes.tolist()}) >= MIN_DISTINCT_CODES


def test_s_agent_samples_differ_and_leave_the_mean(trained):
    trainer, baseline, _ = trained
    agent, learner = trainer.learner.agent, trainer.learner
    with torch.no_grad():
        samples = s_agent_sample(agent.proposal, agent.selection, learner.x1, 64, learner.rates,
                                 torch.Generator().manual_seed(0)).states[:, -1]
    spread = float((samples - samples.mean(dim=0)).pow(2).mean())  # 0 when every sample is the same blob
    # one blob gives 0; measured 0.28x for the afterstate agent on a 2-core Intel Xeon (AMX, bf16), above 0.3x on
    # the Zen classes, so the bar sits below both, far above a collapse
    assert spread > 0.2 * baseline, f"samples' spread {spread:.3f} vs the goals' {baseline:.3f}"


def test_the_afterstate_value_learned_something_beyond_the_distance(trained):
    trainer, _, _ = trained
    value = trainer.learner.agent.goal_value
    if value is None:
        pytest.skip("the lookahead has no value network")
    assert trainer.learner.counts.value == UPDATES and float(value.head.weight.abs().sum()) > 0
