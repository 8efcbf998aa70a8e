"""The method learns: on 16 fixed MNIST goals, 600 learner updates measurably improve both agents.

The budget is a number of learner updates, not seconds, so a busy or slower machine makes the test slower,
never failing. Measured on a quiet 2-core machine (AVX-512 with native bf16; `small` preset, seed 0, 600
updates in 72 s): the GC-agent's reconstruction MSE falls from 0.502 (random networks) to 0.228, a factor of
2.2 (the test asks 1.6); that is the level of the goals' mean image (0.233), which this budget reaches and a
longer run breaks through. The S-agent's cross-entropy on the GC-agent's choices falls from 2.76 to 1.59 nats
(the test asks a drop of 0.2).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from common.storage.data import load_goals
from common.method.losses import selection_cross_entropy
from common.method.presets import small
from evaluation.inference import reconstruct
from common.method.rollout import s_agent_sample
from deploy.settings import RunOptions
from deploy.single_process import SingleProcessTrainer

UPDATES = 600  # a budget in learner updates, so a busy machine makes the test slower, never failing
RECONSTRUCTION_FACTOR = 1.6  # required drop (measured: 2.2 on the 2-core machine, 0.502 -> 0.228)
SELECTION_DROP = 0.2  # nats the S-agent's cross-entropy must fall on the same GC choices


@pytest.fixture(scope="module")
def trained(data_dir):
    goals = load_goals("mnist", data_dir).subset(16)
    options = RunOptions(total_updates=UPDATES, seed=0, device="cpu", progress_every=20)
    trainer = SingleProcessTrainer(small(), goals, options)
    pixels = goals.goals(np.arange(16))
    before = reconstruct(trainer.learner.agent, trainer.learner.x1, trainer.learner.rates, pixels).mse
    initial_selection = copy.deepcopy(trainer.learner.agent.selection)
    summary = trainer.run()
    after = reconstruct(trainer.learner.agent, trainer.learner.x1, trainer.learner.rates, pixels).mse
    print(f"\nlearning: {summary.updates} updates, {summary.env_steps} env steps in {summary.seconds:.0f}s; "
          f"reconstruction MSE {before:.3f} -> {after:.3f}")
    return trainer, initial_selection, before, after


def test_gc_agent_reconstruction_improves_by_a_clear_factor(trained):
    _, _, before, after = trained
    assert after * RECONSTRUCTION_FACTOR < before, f"reconstruction MSE {before:.3f} -> {after:.3f}"


def test_s_agent_selection_loss_falls_on_the_gc_agents_choices(trained):
    trainer, initial_selection, _, _ = trained
    batch = trainer.replay.selections.sample(2048, np.random.default_rng(1))
    state = torch.from_numpy(batch["state"])
    step = torch.from_numpy(batch["step"].astype(np.int64))
    chosen = torch.from_numpy(batch["selection"].astype(np.int64))
    with torch.no_grad():
        initial = float(selection_cross_entropy(initial_selection(state, step), chosen))
        final = float(selection_cross_entropy(trainer.learner.agent.selection(state, step), chosen))
    print(f"selection cross-entropy {initial:.3f} -> {final:.3f} (uniform: {math.log(16):.3f})")
    assert final < initial - SELECTION_DROP


def test_s_agent_samples_are_not_all_identical(trained):
    trainer, _, _, _ = trained
    agent = trainer.learner.agent
    with torch.no_grad():
        samples = s_agent_sample(agent.proposal, agent.selection, trainer.learner.x1, 16, trainer.learner.rates,
                                 torch.Generator().manual_seed(0))
    finals = samples.states[:, -1].flatten(1)
    distinct = torch.unique(finals.round(decimals=4), dim=0).shape[0]
    assert distinct > 1 and float(finals.std(dim=0).mean()) > 0.01
