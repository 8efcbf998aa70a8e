"""Named starting points: the paper's settings, the lookahead extension, and sizes for a CPU or a test.

`paper` is Appendix B and section 4.1 (H = A = 16, kappa 0.05, rho 0.06, Adam 1e-4, batch 128,
4-level U-Net, the summed Gaussian loss with sigma^2 = 1/2); what the paper leaves unsaid (replay sizes,
the samples-per-insert ratio) takes common DQN values. `small` keeps the paper's method but shrinks
widths, horizon and batches so that two CPU cores train in minutes. `small-lookahead` (the default
without a GPU) and `paper-lookahead` (the default with one) add the lookahead GC-agent, an extension
of the paper chosen from the measurements in docs/results.md. `tiny` is for tests of the plumbing.
"""

from __future__ import annotations

import dataclasses

from common.method.config import (ActingConfig, ExperimentConfig, LearningConfig, MDPConfig, NetworkConfig,
                           ReplayConfig, SamplingConfig)
from common.errors import ConfigError


def paper() -> ExperimentConfig:
    """The paper's configuration (section 4.1, Appendix B)."""
    return ExperimentConfig()


def small() -> ExperimentConfig:
    """Two CPU cores, minutes: narrower networks, H = 4, A = 16, faster rates, smaller batches.

    The goal loss is the paper's summed one (sigma^2 = 1/2), as in `paper`, so kappa = 0.05 weighs the malus
    against Q-values exactly as the paper does: the paper's rule at CPU size. (With the per-pixel mean the
    malus was d = 784 times heavier, and the argmin followed it rather than the Q-values.)
    """
    lr = 1e-3
    return ExperimentConfig(
        mdp=MDPConfig(horizon=4, num_proposals=16, loss_reduction="sum"),
        network=NetworkConfig(proposal_widths=(16, 32, 64, 128), selection_widths=(16, 32, 64), groups=8),
        acting=ActingConfig(kappa=0.05, goals_per_rollout=16),
        learning=LearningConfig(proposal_lr=lr, selection_lr=lr, q_lr=lr, proposal_batch=16, selection_batch=64,
                                q_batch=64),
        replay=ReplayConfig(gc_capacity=50_000, selection_capacity=50_000, proposal_capacity=12_500,
                            min_size_to_sample=256, samples_per_insert=8.0))


def tiny() -> ExperimentConfig:
    """Seconds per run: for tests of wiring, checkpoints and faults, not of sample quality."""
    return ExperimentConfig(
        mdp=MDPConfig(horizon=3, num_proposals=4, loss_reduction="mean"),
        network=NetworkConfig(proposal_widths=(8, 8, 16, 16), selection_widths=(8, 8, 16), groups=4),
        acting=ActingConfig(kappa=0.05, goals_per_rollout=8),
        learning=LearningConfig(proposal_lr=1e-3, selection_lr=1e-3, q_lr=1e-3, proposal_batch=8,
                                selection_batch=16, q_batch=16),
        replay=ReplayConfig(gc_capacity=4_000, selection_capacity=4_000, proposal_capacity=1_000,
                            min_size_to_sample=48, samples_per_insert=4.0))


def lookahead(config: ExperimentConfig) -> ExperimentConfig:
    """The extension (docs/results.md): the GC-agent acts by the lookahead; everything else unchanged."""
    return dataclasses.replace(config, acting=dataclasses.replace(config.acting, **LOOKAHEAD_ACTING))


LOOKAHEAD_ACTING = {"behaviour": "lookahead", "beam_width": 1}


def small_lookahead() -> ExperimentConfig:
    """The default without a GPU: `small` with the lookahead GC-agent, H = 8 steps of A = 32 proposals (40-bit
    codes), the Laplace last step, fresh replay and sharpened sampling.

    Each was measured with bench/quality.py on full MNIST (docs/results.md, ablation). Precision is every
    preset's "auto": bf16 autocast where the device computes it natively, float32 elsewhere.
    """
    config = lookahead(small())
    mdp = dataclasses.replace(config.mdp, horizon=8, num_proposals=32, likelihood="laplace")
    return dataclasses.replace(config, mdp=mdp, replay=FRESH_REPLAY, sampling=SHARPENED_SAMPLING)


# The Laplace last step (issue 19): the goal loss |x_{H+1} - goal| / sigma in place of the Gaussian's squared error,
# in the E-step (the lookahead's distance) and the M-step (the unfolded update) alike, so goals that share a code pull
# the decoder to their per-pixel median, a sharp stroke, rather than their mean, a grey blur. Measured with
# bench/quality.py, 30 minutes, full MNIST, one AMD Zen 4 class (AVX-512, bf16), against the Gaussian
# (docs/results.md): reconstruction FID 26.5 against 40.2, sample FID 35.2 against 43.8 (the same-class VAE 50.5),
# MSE 0.106 against 0.067, at the same updates a minute; then bench/table1.py on a Zen 5 (AVX-512, bf16): sample FID
# 31.1 against the same-run VAE's 48.1, reconstruction FID 24.4. The paper's last step is Gaussian.


# A = 32 proposals a step (issue 19): 40-bit codes at H = 8, so fewer goals share each code and the proposal network
# averages less. Measured with bench/quality.py, 30 minutes, full MNIST, one Intel model-167 class, against A = 16
# (docs/results.md): MSE 0.065 against 0.073, sample FID 42.9 / 40.2 against 42.3 / 45.7 in two draws, at 22 %
# fewer updates a minute. The paper has A = 16.


# Fresh replay (issue 19): the S-prop memory holds the newest 2,000 code sequences and the selection memory the
# newest 16,000 steps (small: 12,500 and 50,000), so the proposal and S-select updates learn from the codes of
# recent decoders. Measured in docs/results.md: sample FID 58.0 against 66.6 at 30 minutes (Zen 5), 127 against
# 147 at 10 (Emerald Rapids). The paper gives no replay sizes.
FRESH_REPLAY = dataclasses.replace(small().replay, proposal_capacity=2_000, selection_capacity=16_000)


# Sharpened sampling (issue 19): S-select's temperature 0.8 and its 8 most likely selections (of A), so the S-agent's
# near-uniform late steps no longer walk into branches the proposal network was barely trained on. Measured with
# bench/sampling_sweep.py on two 30-minute checkpoints (docs/results.md): MNIST 58.7 -> 51.2, Fashion-MNIST
# 103.7 -> 97.7 sample FID. An extension: the paper samples plainly (temperature 1, all A).
SHARPENED_SAMPLING = SamplingConfig(temperature=0.8, top_k=8)


def paper_lookahead() -> ExperimentConfig:
    """The default with a GPU: the paper's networks and rates with the lookahead GC-agent."""
    return lookahead(paper())


PRESETS = {"paper": paper, "paper-lookahead": paper_lookahead, "small": small, "small-lookahead": small_lookahead,
           "tiny": tiny}
DEFAULT_GPU_PRESET, DEFAULT_CPU_PRESET = "paper-lookahead", "small-lookahead"


def preset(name: str | None, has_gpu: bool = False) -> tuple[str, ExperimentConfig]:
    """The named preset; with no name, the lookahead recipe sized for the hardware (`has_gpu`: the caller's
    device, so this module stays free of device probing)."""
    if name is None:
        name = DEFAULT_GPU_PRESET if has_gpu else DEFAULT_CPU_PRESET
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (expected one of {', '.join(PRESETS)})")
    return name, PRESETS[name]()
