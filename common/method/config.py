"""Typed, validated settings of the method, split the way the paper splits the algorithm.

Each component takes only its own section (the MDP, the networks, acting, learning, replay, sampling), so no
global object is threaded everywhere; `ExperimentConfig` only bundles them for presets, files and
checkpoints. Every section checks itself at construction so a bad value stops a run before it starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from common.errors import ConfigError

InitialState = Literal["zeros", "data_mean"]
INITIAL_STATES = ("zeros", "data_mean")
LOSS_REDUCTIONS = ("sum", "mean")
LIKELIHOODS = ("gaussian", "laplace")
BEHAVIOURS = ("q", "lookahead", "afterstate")
CANDIDATE_BEHAVIOURS = ("lookahead", "afterstate")  # those that score the A proposals' next states
Q_TARGETS = ("sampled", "all_actions")
SELECTION_TARGETS = ("hard", "soft")
SELECTION_SOURCES = ("replay", "sequences")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check_positive_int(name: str, value) -> None:
    """Refuse anything but an integer above zero, naming the setting."""
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_positive(name: str, value) -> None:
    """Refuse anything but a finite number above zero, naming the setting."""
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def check_non_negative(name: str, value) -> None:
    """Refuse negative or non-finite numbers, naming the setting."""
    if not _is_number(value) or value < 0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")


def check_int_range(name: str, value, low: int, high: int | None = None, meaning: str = "") -> None:
    """Refuse anything but an integer in [low, high] (no upper bound when high is None), naming the setting.

    For bounds the other checks cannot say, like a seed numpy accepts or a TCP port with special values;
    `meaning` explains them in the message, e.g. " (-1: off)".
    """
    if not _is_int(value) or value < low or (high is not None and value > high):
        expected = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise ConfigError(f"{name} must be {expected}{meaning}, got {value!r}")


def check_bool(name: str, value) -> None:
    """Refuse anything but true or false, naming the setting."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


PRECISIONS = (True, False, "auto")


def check_precision(name: str, value) -> None:
    """Refuse anything but true, false or auto (bfloat16 autocast decided by the hardware, common/device.py)."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(f"{name} must be true, false or auto, got {value!r}")


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    """Refuse a value outside a fixed set of names, listing them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_fraction(name: str, value) -> None:
    """Refuse numbers outside [0, 1], as for the share of episodes acted by one rule."""
    if not _is_number(value) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")


def check_unit_interval(name: str, value) -> None:
    """Refuse numbers outside (0, 1], as for Polyak rates."""
    if not _is_number(value) or not 0 < value <= 1:
        raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}")


@dataclass(frozen=True)
class MDPConfig:
    """The episodic MDP of section 3.1: H steps x_{h+1} = x_h + alpha_h y_h, Gaussian last step.

    The goal loss is ||x_{H+1} - goal||^2 / (2 sigma^2), the Gaussian negative log-likelihood. With
    loss_reduction "sum" it is the paper's (sigma^2 = 1/2 makes it the summed squared error); "mean"
    divides it by the pixel count d (the per-pixel MSE), which makes the malus kappa * log S-select d
    times heavier against the Q-values. The paper does not state sigma; we take sigma^2 = 1/2.
    """

    horizon: int = 16  # H
    num_proposals: int = 16  # A
    alphas: tuple[float, ...] | None = None  # alpha_1..alpha_H; None means alpha_h = 1/h
    sigma: float = math.sqrt(0.5)
    initial_state: InitialState = "zeros"
    loss_reduction: str = "sum"  # "sum": the paper's loss; "mean": divided by the pixel count d
    likelihood: str = "gaussian"  # the last step: "gaussian" (the paper's, squared error); "laplace" (extension:
    # |x_{H+1} - goal| / sigma, an L1 loss whose optimum is the goals' per-pixel median rather than their mean)

    def __post_init__(self):
        check_positive_int("mdp.horizon", self.horizon)
        check_int_range("mdp.num_proposals", self.num_proposals, 2, None,
                        " (with one proposal the GC-agent and the S-agent have nothing to choose)")
        check_positive("mdp.sigma", self.sigma)
        check_choice("mdp.loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        check_choice("mdp.likelihood", self.likelihood, LIKELIHOODS)
        if self.initial_state not in INITIAL_STATES:
            raise ConfigError(f"mdp.initial_state must be one of {INITIAL_STATES}, got {self.initial_state!r}")
        if self.alphas is not None:
            self._check_alphas()

    def _check_alphas(self) -> None:
        alphas = self.alphas
        if not isinstance(alphas, (tuple, list)) or len(alphas) != self.horizon:
            got = len(alphas) if isinstance(alphas, (tuple, list)) else repr(alphas)
            raise ConfigError(f"mdp.alphas must list one rate per step ({self.horizon} for H={self.horizon}), got {got}")
        for h, alpha in enumerate(alphas, start=1):
            check_positive(f"mdp.alphas[{h}]", alpha)
        object.__setattr__(self, "alphas", tuple(float(a) for a in alphas))

    def rates(self) -> tuple[float, ...]:
        """alpha_1..alpha_H, the paper's 1/h unless a list was given."""
        if self.alphas is not None:
            return self.alphas
        return tuple(1.0 / h for h in range(1, self.horizon + 1))


@dataclass(frozen=True)
class NetworkConfig:
    """Widths of the three networks of Appendix B (GroupNorm groups must divide every width)."""

    proposal_widths: tuple[int, ...] = (64, 128, 256, 512)  # U-Net levels, full resolution first
    selection_widths: tuple[int, ...] = (64, 128, 256)  # the three conv blocks of S-select and GC-Q
    groups: int = 8
    selection_prefix: bool = False  # extension: S-select-net also reads the code prefix a_<h (a small GRU over
    # it); it then learns from whole code sequences (learning.selection_source = "sequences")

    def __post_init__(self):
        check_positive_int("network.groups", self.groups)
        check_bool("network.selection_prefix", self.selection_prefix)
        for name in ("proposal_widths", "selection_widths"):
            widths = getattr(self, name)
            if not isinstance(widths, (tuple, list)) or len(widths) < 1:
                raise ConfigError(f"network.{name} must be a non-empty list of widths, got {widths!r}")
            for i, width in enumerate(widths):
                check_positive_int(f"network.{name}[{i}]", width)
                if width % self.groups:
                    raise ConfigError(
                        f"network.{name}[{i}] = {width} is not divisible by network.groups = {self.groups}")
            object.__setattr__(self, name, tuple(widths))


@dataclass(frozen=True)
class ActingConfig:
    """How the GC-agent chooses and explores (Algorithm 1) and how many goals one rollout call handles.

    behaviour "q" is the paper: argmin_a Q + kappa * log S-select. "lookahead" and "afterstate" are extensions
    (common/method/lookahead.py, scoring.py): all A proposals are stepped and the candidate that scores best is
    kept, with a beam of beam_width sequences; the lookahead scores by the distance to the goal, the afterstate
    agent by a learned value of the candidate (GoalValueNet), both plus prior_weight * -log S-select (the
    bound's KL term; 0: off), greedily or, with `stochastic`, by a draw from the posterior. q_fraction of each
    batch's goals still act by the paper's rule, so the Q-network sees the consequences of its own choices.
    """

    kappa: float = 0.05  # weight of the malus kappa * log S-select(a | x, h)
    goals_per_rollout: int = 64  # goals rolled out together, one batched forward pass per step
    behaviour: str = "q"  # "q" (the paper) or "lookahead" (extension)
    beam_width: int = 1  # lookahead: partial sequences kept per goal (1: greedy one-step lookahead)
    q_fraction: float = 0.0  # lookahead: share of goals acted by the paper's Q + malus rule instead
    prior_weight: float = 0.0  # kappa' of the candidate score's -log S-select term (per-pixel distance per nat)
    stochastic: bool = False  # draw the candidate from softmax(-score / prior_weight) instead of the argmin
    s_prefix_fraction: float = 0.0  # hybrid episodes: share of goals whose first 1..H-1 steps the S-agent draws
    bf16: bool | str = "auto"  # acting's forward passes under bfloat16 autocast (speed; states stay float32);
    # "auto": on where the device computes bfloat16 natively (common/device.resolve_bf16)

    def __post_init__(self):
        check_non_negative("acting.kappa", self.kappa)
        check_positive_int("acting.goals_per_rollout", self.goals_per_rollout)
        check_choice("acting.behaviour", self.behaviour, BEHAVIOURS)
        check_positive_int("acting.beam_width", self.beam_width)
        check_fraction("acting.q_fraction", self.q_fraction)
        check_non_negative("acting.prior_weight", self.prior_weight)
        check_bool("acting.stochastic", self.stochastic)
        check_fraction("acting.s_prefix_fraction", self.s_prefix_fraction)
        if self.s_prefix_fraction and self.beam_width != 1:
            raise ConfigError(f"acting.s_prefix_fraction needs acting.beam_width = 1, got {self.beam_width!r}")
        check_precision("acting.bf16", self.bf16)
        if self.stochastic and not (self.prior_weight > 0 and self.beam_width == 1):
            raise ConfigError(f"acting.stochastic needs acting.prior_weight > 0 (the posterior's temperature) and "
                              f"acting.beam_width = 1, got {self.prior_weight!r} and {self.beam_width!r}")


@dataclass(frozen=True)
class LearningConfig:
    """Algorithm 2: optimiser rates, batch sizes, and how often each update runs (in learner steps)."""

    rho: float = 0.06  # Polyak rate: target <- rho * online + (1 - rho) * target
    proposal_lr: float = 1e-4
    selection_lr: float = 1e-4
    q_lr: float = 1e-4
    proposal_batch: int = 128
    selection_batch: int = 128
    q_batch: int = 128
    proposal_every: int = 1
    selection_every: int = 1
    q_every: int = 1
    target_every: int = 1  # in Q updates
    max_grad_norm: float = 10.0
    q_target: str = "sampled"  # "sampled": Algorithm 2's Double-DQN target for the taken selection;
    # "all_actions" (extension): every selection's next state is computed through the proposal network
    # and all A Q-values are regressed (exact goal loss at h = H, Double-DQN bootstrap before)
    bf16: bool | str = "auto"  # the updates' forward passes under bfloat16 autocast (speed; weights stay float32);
    # "auto": as acting.bf16
    demo_margin: float = 0.0  # extension: large-margin loss making GC-select-Qnet prefer the acting GC-agent's
    # choices by this much (in Q units: the goal loss, mdp.loss_reduction's sum or per-pixel mean), as DQfD
    # learns from a demonstrator; 0: off
    demo_weight: float = 1.0  # weight of that loss beside the Double-DQN regression
    selection_targets: str = "hard"  # "hard": S-select imitates the GC-agent's choices (Algorithm 2); "soft"
    # (extension): the GC-agent's posterior over the A candidates the candidate GC-agents computed when acting
    selection_source: str = "replay"  # "replay": S-select learns from the selection memory (Algorithm 2);
    # "sequences" (extension): from every step of the proposal update's code sequences, the states recomputed
    # by the current proposal network (fresh states, whole prefixes)
    averaging_rate: float = 0.0  # extension: Polyak averaging of the S-agent (proposal and selection networks),
    # averaged <- rate * online + (1 - rate) * averaged after each of their updates, with a warm-up rate of
    # 9 / (10 + updates) until it falls to this one; sampling, evaluation and checkpoints' readers use the averaged
    # S-agent, acting the online one. 0: off (the paper)

    def __post_init__(self):
        check_unit_interval("learning.rho", self.rho)
        if self.averaging_rate != 0:
            check_unit_interval("learning.averaging_rate", self.averaging_rate)
        for name in ("proposal_lr", "selection_lr", "q_lr", "max_grad_norm"):
            check_positive(f"learning.{name}", getattr(self, name))
        for name in ("proposal_batch", "selection_batch", "q_batch", "proposal_every",
                     "selection_every", "q_every", "target_every"):
            check_positive_int(f"learning.{name}", getattr(self, name))
        check_choice("learning.q_target", self.q_target, Q_TARGETS)
        check_precision("learning.bf16", self.bf16)
        check_non_negative("learning.demo_margin", self.demo_margin)
        check_non_negative("learning.demo_weight", self.demo_weight)
        check_choice("learning.selection_targets", self.selection_targets, SELECTION_TARGETS)
        check_choice("learning.selection_source", self.selection_source, SELECTION_SOURCES)
        if self.selection_source == "sequences" and self.selection_targets != "hard":
            raise ConfigError("learning.selection_source = 'sequences' needs learning.selection_targets = 'hard' "
                              f"(code sequences keep no posteriors), got {self.selection_targets!r}")


@dataclass(frozen=True)
class ReplayConfig:
    """The three replay memories and the samples-per-insert ratio that paces learning against acting.

    The ratio counts GC transitions: Q-update samples drawn per transition inserted. The other two
    memories are filled and drawn in step with it.
    """

    gc_capacity: int = 200_000  # GC transitions (x_h, h, a_h, x_{h+1}, loss_h, goal)
    selection_capacity: int = 200_000  # S-select samples (x_h, h, a_h)
    proposal_capacity: int = 50_000  # S-prop sequences (a_1..a_H, goal)
    min_size_to_sample: int = 2_000  # GC transitions needed before the first update
    samples_per_insert: float = 8.0
    samples_per_insert_tolerance: float = 0.5  # allowed drift, as a fraction of min_size_to_sample
    state_dtype: str = "float32"  # how replay keeps the states x_h; "float16" halves replay memory (an extension)

    def __post_init__(self):
        for name in ("gc_capacity", "selection_capacity", "proposal_capacity", "min_size_to_sample"):
            check_positive_int(f"replay.{name}", getattr(self, name))
        check_choice("replay.state_dtype", self.state_dtype, ("float32", "float16"))
        check_positive("replay.samples_per_insert", self.samples_per_insert)
        check_positive("replay.samples_per_insert_tolerance", self.samples_per_insert_tolerance)
        if self.min_size_to_sample > self.gc_capacity:
            raise ConfigError(f"replay.min_size_to_sample = {self.min_size_to_sample} exceeds "
                              f"replay.gc_capacity = {self.gc_capacity}")


@dataclass(frozen=True)
class SamplingConfig:
    """How the S-agent draws a_h when it samples (Algorithm 3): S-select's temperature and top-k.

    The checkpoint keeps it, so `launch.py sample`, `evaluate` and the benchmarks draw a model the way its
    recipe says. The defaults (temperature 1, all A selections) are the paper's plain sampling.
    """

    temperature: float = 1.0  # logits / temperature; below 1 is sharper
    top_k: int = 0  # draw among the k most likely selections only; 0: all A

    def __post_init__(self):
        check_positive("sampling.temperature", self.temperature)
        check_int_range("sampling.top_k", self.top_k, 0, meaning=" (0: all A selections)")


@dataclass(frozen=True)
class ExperimentConfig:
    """The six sections together, as a preset, a config file or a checkpoint holds them."""

    mdp: MDPConfig = field(default_factory=MDPConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    acting: ActingConfig = field(default_factory=ActingConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        if self.network.selection_prefix:
            check_prefix_settings(self)
        if self.sampling.top_k > self.mdp.num_proposals:
            raise ConfigError(f"sampling.top_k = {self.sampling.top_k} exceeds A = mdp.num_proposals = "
                              f"{self.mdp.num_proposals} (expected 0 for all, or 1..A)")
        if self.mdp.likelihood != "gaussian" and self.acting.behaviour == "afterstate":
            raise ConfigError(f"mdp.likelihood = {self.mdp.likelihood!r} needs acting.behaviour 'lookahead' or 'q' "
                              "(the afterstate value network learns the squared distance), got 'afterstate'")

    def to_dict(self) -> dict:
        """Plain nested dict, for checkpoints and for printing the settings a run used."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> ExperimentConfig:
        """Inverse of to_dict; unknown sections or fields are refused with their name."""
        return apply_overrides(cls(), data, source)


def check_prefix_settings(config: ExperimentConfig) -> None:
    """A prefix-reading S-select-net needs a_<h wherever it is asked: refuse the settings that ask it without one
    (the candidates' prior term and hybrid prefixes score beams whose prefixes they do not carry)."""
    if config.learning.selection_source != "sequences":
        raise ConfigError("network.selection_prefix = true needs learning.selection_source = 'sequences' (the "
                          f"selection memory keeps no code prefixes), got {config.learning.selection_source!r}")
    for name in ("prior_weight", "s_prefix_fraction"):
        if getattr(config.acting, name):
            raise ConfigError(f"network.selection_prefix = true needs acting.{name} = 0, "
                              f"got {getattr(config.acting, name)!r}")


SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}


def apply_overrides(base: ExperimentConfig, overrides: dict, source: str) -> ExperimentConfig:
    """Replace the fields named in a nested mapping {section: {field: value}}, checking every name."""
    check_override_names(base, overrides, source)
    sections = {section: dataclasses.replace(getattr(base, section), **_as_fields(values))
                for section, values in overrides.items()}
    return dataclasses.replace(base, **sections)


def check_override_names(base: ExperimentConfig, overrides, source: str) -> None:
    """Every section and setting named in `overrides` exists; the error names `source` (a file, --set)."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(overrides).__name__}")
    for section, values in overrides.items():
        current = getattr(base, section, None) if section in SECTIONS else None
        if current is None:
            raise ConfigError(f"{source}: unknown section {section!r} (expected one of {', '.join(SECTIONS)})")
        _check_section_names(current, section, values, source)


def merge_overrides(*layers: dict) -> dict:
    """One nested mapping from several, a later layer's setting winning: settings that need each other are
    then checked together, whichever layer (config file, --set) each came from."""
    merged: dict = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


def _check_section_names(current, section: str, values, source: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section {section!r} must be a mapping, got {values!r}")
    names = [f.name for f in dataclasses.fields(current)]
    for name in values:
        if name not in names:
            raise ConfigError(f"{source}: unknown setting '{section}.{name}' (expected one of {', '.join(names)})")


def _as_fields(values: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
