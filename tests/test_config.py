import dataclasses
import math

import pytest

import common.method.presets as presets
from common.method.config import (ActingConfig, ExperimentConfig, LearningConfig, MDPConfig, NetworkConfig, ReplayConfig,
                           SamplingConfig, apply_overrides)
from common.errors import ConfigError

BAD_SETTINGS = [
    (MDPConfig, {"horizon": 0}, "mdp.horizon", "0"),
    (MDPConfig, {"horizon": -3}, "mdp.horizon", "-3"),
    (MDPConfig, {"horizon": 2.5}, "mdp.horizon", "2.5"),
    (MDPConfig, {"num_proposals": 0}, "mdp.num_proposals", "0"),
    (MDPConfig, {"num_proposals": -1}, "mdp.num_proposals", "-1"),
    (MDPConfig, {"sigma": 0.0}, "mdp.sigma", "0.0"),
    (MDPConfig, {"sigma": -0.5}, "mdp.sigma", "-0.5"),
    (MDPConfig, {"sigma": math.nan}, "mdp.sigma", "nan"),
    (MDPConfig, {"initial_state": "mean"}, "mdp.initial_state", "mean"),
    (MDPConfig, {"horizon": 3, "alphas": (1.0, 0.5)}, "mdp.alphas", "2"),
    (MDPConfig, {"horizon": 2, "alphas": (1.0, 0.5, 0.2)}, "mdp.alphas", "3"),
    (MDPConfig, {"horizon": 3, "alphas": (1.0, 0.0, 0.2)}, "mdp.alphas[2]", "0.0"),
    (MDPConfig, {"horizon": 2, "alphas": (-1.0, 0.5)}, "mdp.alphas[1]", "-1.0"),
    (NetworkConfig, {"proposal_widths": (8, 12, 16, 16), "groups": 8}, "network.proposal_widths", "12"),
    (NetworkConfig, {"selection_widths": (8, 8, 10), "groups": 4}, "network.selection_widths", "10"),
    (NetworkConfig, {"groups": 0}, "network.groups", "0"),
    (NetworkConfig, {"selection_widths": (8, -8, 16), "groups": 4}, "network.selection_widths", "-8"),
    (ActingConfig, {"kappa": -0.05}, "acting.kappa", "-0.05"),
    (ActingConfig, {"goals_per_rollout": 0}, "acting.goals_per_rollout", "0"),
    (ActingConfig, {"behaviour": "greedy"}, "acting.behaviour", "greedy"),
    (ActingConfig, {"beam_width": 0}, "acting.beam_width", "0"),
    (ActingConfig, {"q_fraction": 1.5}, "acting.q_fraction", "1.5"),
    (ActingConfig, {"q_fraction": -0.1}, "acting.q_fraction", "-0.1"),
    (MDPConfig, {"loss_reduction": "avg"}, "mdp.loss_reduction", "avg"),
    (LearningConfig, {"q_target": "every"}, "learning.q_target", "every"),
    (LearningConfig, {"rho": 0.0}, "learning.rho", "0.0"),
    (LearningConfig, {"rho": 1.5}, "learning.rho", "1.5"),
    (LearningConfig, {"rho": -0.1}, "learning.rho", "-0.1"),
    (LearningConfig, {"proposal_lr": 0.0}, "learning.proposal_lr", "0.0"),
    (LearningConfig, {"selection_lr": -1e-4}, "learning.selection_lr", "-0.0001"),
    (LearningConfig, {"q_lr": -1.0}, "learning.q_lr", "-1.0"),
    (LearningConfig, {"proposal_batch": 0}, "learning.proposal_batch", "0"),
    (LearningConfig, {"selection_batch": -2}, "learning.selection_batch", "-2"),
    (LearningConfig, {"q_batch": 0}, "learning.q_batch", "0"),
    (LearningConfig, {"target_every": 0}, "learning.target_every", "0"),
    (LearningConfig, {"max_grad_norm": 0.0}, "learning.max_grad_norm", "0.0"),
    (ReplayConfig, {"gc_capacity": 0}, "replay.gc_capacity", "0"),
    (ReplayConfig, {"proposal_capacity": -5}, "replay.proposal_capacity", "-5"),
    (ReplayConfig, {"samples_per_insert": 0.0}, "replay.samples_per_insert", "0.0"),
    (ReplayConfig, {"min_size_to_sample": 0}, "replay.min_size_to_sample", "0"),
    (ReplayConfig, {"gc_capacity": 100, "min_size_to_sample": 101}, "replay.min_size_to_sample", "101"),
    (SamplingConfig, {"temperature": 0.0}, "sampling.temperature", "0.0"),
    (SamplingConfig, {"temperature": math.inf}, "sampling.temperature", "inf"),
    (SamplingConfig, {"top_k": -1}, "sampling.top_k", "-1"),
    (SamplingConfig, {"top_k": 2.0}, "sampling.top_k", "2.0"),
]


@pytest.mark.parametrize("cls, kwargs, name, value", BAD_SETTINGS)
def test_bad_setting_names_field_and_value_on_one_line(cls, kwargs, name, value):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert name in message and value in message
    assert "\n" not in message


def test_bool_is_not_an_integer_setting():
    with pytest.raises(ConfigError, match="mdp.horizon"):
        MDPConfig(horizon=True)


def test_rho_one_and_kappa_zero_are_allowed():
    assert LearningConfig(rho=1.0).rho == 1.0
    assert ActingConfig(kappa=0.0).kappa == 0.0


def test_alphas_list_is_stored_as_float_tuple():
    assert MDPConfig(horizon=2, alphas=[1, 0.5]).alphas == (1.0, 0.5)


@pytest.mark.parametrize("overrides, name", [
    ({"mdpp": {"horizon": 3}}, "mdpp"),
    ({"mdp": {"horizn": 3}}, "mdp.horizn"),
    ({"learning": {"rho": 2.0}}, "learning.rho"),
    ({"mdp": 3}, "mdp"),
])
def test_apply_overrides_refuses_with_name(overrides, name):
    with pytest.raises(ConfigError) as info:
        apply_overrides(ExperimentConfig(), overrides, "test.yaml")
    assert name in str(info.value) and "\n" not in str(info.value)


def test_apply_overrides_replaces_and_converts_lists():
    config = apply_overrides(ExperimentConfig(), {"mdp": {"horizon": 2, "alphas": [1.0, 0.25]},
                                                  "acting": {"kappa": 0.5}}, "test")
    assert config.mdp.horizon == 2 and config.mdp.alphas == (1.0, 0.25) and config.acting.kappa == 0.5
    assert config.learning == LearningConfig()


def test_top_k_above_a_is_refused_with_both_values():
    with pytest.raises(ConfigError, match=r"sampling.top_k = 5 exceeds A = mdp.num_proposals = 4"):
        apply_overrides(presets.tiny(), {"sampling": {"top_k": 5}}, "--set")


def test_a_checkpoint_config_without_a_sampling_section_samples_as_the_paper():
    saved = presets.tiny().to_dict()
    del saved["sampling"]  # written before the section existed
    assert ExperimentConfig.from_dict(saved).sampling == SamplingConfig(temperature=1.0, top_k=0)


def test_to_dict_from_dict_round_trip():
    config = presets.tiny()
    assert ExperimentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", ["paper", "paper-lookahead", "small", "small-lookahead", "tiny"])
def test_presets_build(name):
    chosen, config = presets.preset(name)
    assert chosen == name and isinstance(config, ExperimentConfig)


def test_paper_preset_values():
    config = presets.paper()
    assert (config.mdp.horizon, config.mdp.num_proposals) == (16, 16)
    assert config.mdp.rates()[3] == pytest.approx(0.25)
    assert config.acting.kappa == 0.05 and config.learning.rho == 0.06
    assert config.learning.q_lr == 1e-4 and config.learning.q_batch == 128
    assert config.mdp.initial_state == "zeros"
    # the paper's summed Gaussian loss (sigma^2 = 1/2), against which kappa weighs log-probabilities
    assert config.mdp.loss_reduction == "sum" and config.mdp.sigma ** 2 == pytest.approx(0.5)
    assert config.acting.behaviour == "q" and config.learning.q_target == "sampled"


def test_paper_lookahead_differs_from_paper_only_in_the_behaviour():
    base, extended = presets.paper(), presets.paper_lookahead()
    assert extended.acting.behaviour == "lookahead"
    assert dataclasses.replace(extended, acting=base.acting) == base


def test_small_lookahead_is_small_with_the_lookahead_h8_a32_laplace_fresh_replay_and_sharpened_sampling():
    base, extended = presets.small(), presets.small_lookahead()
    assert (extended.acting.behaviour, extended.mdp.horizon, extended.mdp.num_proposals, extended.mdp.likelihood,
            extended.acting.bf16, extended.learning.bf16) == ("lookahead", 8, 32, "laplace", "auto", "auto")
    assert (extended.replay.proposal_capacity, extended.replay.selection_capacity) == (2_000, 16_000)
    assert (extended.sampling.temperature, extended.sampling.top_k) == (0.8, 8)
    assert dataclasses.replace(extended, acting=base.acting, mdp=base.mdp, replay=base.replay,
                               sampling=base.sampling) == base


@pytest.mark.parametrize("name", ["paper", "paper-lookahead", "small"])
def test_the_paper_s_method_presets_sample_plainly_with_the_gaussian_last_step(name):
    config = presets.preset(name)[1]
    assert config.sampling == SamplingConfig(temperature=1.0, top_k=0) and config.mdp.likelihood == "gaussian"


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_leaves_precision_to_the_hardware(name):
    config = presets.PRESETS[name]()
    assert (config.acting.bf16, config.learning.bf16) == ("auto", "auto")


def test_default_preset_without_gpu_is_small_lookahead():
    name, config = presets.preset(None, has_gpu=False)
    assert name == "small-lookahead" and config == presets.small_lookahead()


def test_default_preset_with_gpu_is_paper_lookahead():
    name, config = presets.preset(None, has_gpu=True)
    assert name == "paper-lookahead" and config == presets.paper_lookahead()


def test_unknown_preset_raises():
    with pytest.raises(ConfigError, match="huge") as info:
        presets.preset("huge")
    assert "\n" not in str(info.value)
