"""Inference with a trained agent, as section 4.2 of the paper measures it.

- Reconstruction: the GC-agent's greedy rollout towards each test image (Algorithm 1 without the
  exploration malus); MSE per pixel on images scaled to [-1, 1].
- Samples: the S-agent alone (Algorithm 3).
- Decoding: a reconstruction is fully described by the GC-agent's H selections; the unfolded proposal
  network (S-prop-net_{theta,U}) turns such a code back into the image.

Functions take any object with the VAgent attributes `proposal`, `selection` and `goal_q`, so tests can
hand-build agents. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import EvaluationError
from common.method.config import BEHAVIOURS, ExperimentConfig
from common.method.lookahead import lookahead_rollout
from common.method.losses import selection_cross_entropy
from common.method.pixels import to_uint8, to_unit_range
from common.method.networks import selection_logits
from common.method.rollout import greedy_reconstruction, s_agent_sample, unfold_proposals
from common.method.scoring import CandidateScoring
from evaluation.fid import Progress

ENCODERS = BEHAVIOURS  # the GC-agent that turns an image into a code is one of those that act (see reconstruct)
MSE_SCALE = "per-pixel mean squared error on images scaled to [-1, 1] (divide by 4 for the [0, 1] scale)"


def _unit(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 or float [-1, 1] -> float32 [-1, 1] on device."""
    images = images.to(device)
    return to_unit_range(images) if images.dtype == torch.uint8 else images.float()


def _batches(total: int, batch_size: int):
    """(start, stop) of consecutive batches covering [0, total)."""
    for start in range(0, total, batch_size):
        yield start, min(start + batch_size, total)


@dataclass
class Reconstructions:
    """The GC-agent's greedy reconstructions of a set of goals."""

    mse: float  # per pixel, [-1, 1] scale
    images: torch.Tensor  # [N, C, H, W] uint8 x_{H+1}, quantised as a saved image would be
    codes: torch.Tensor  # [N, H] long: the selections a_1..a_H
    finals: torch.Tensor | None = None  # [N, C, H, W] float x_{H+1}, when asked for (exact comparisons)
    states: torch.Tensor | None = None  # [N, H+1, C, H, W] float x_1..x_{H+1}, when asked for (keep_states)


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on `device` when `bf16` (evaluation runs at the precision the model acted with)."""
    return torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16)


@torch.inference_mode()
def reconstruct(agent, x1: torch.Tensor, rates: torch.Tensor, goals: torch.Tensor, batch_size: int = 256,
                progress: Progress | None = None, stage: str = "reconstruct", keep_float: bool = False,
                encoder: str = "q", beam_width: int = 1, bf16: bool = False,
                keep_states: bool = False, prior_weight: float = 0.0, likelihood: str = "gaussian") -> Reconstructions:
    """GC-agent rollouts towards `goals` [N, C, H, W] (uint8 or float [-1, 1]), batch by batch.

    encoder "q": the Q-network's greedy choices (Algorithm 1 without the malus, the paper's encoder);
    "lookahead" / "afterstate": the candidate-scoring extensions with `beam_width` and the prior's weight
    (common/method/scoring.py), greedy, by the distance of the model's `likelihood`. `bf16`: the networks under
    bfloat16 autocast (states and the MSE stay float32).
    """
    if encoder not in available_encoders(agent):
        raise EvaluationError(f"encoder must be one of {', '.join(available_encoders(agent))} for this model, "
                              f"got {encoder!r}")
    total, squared, kept = goals.shape[0], 0.0, {"images": [], "codes": [], "finals": [], "states": []}
    if progress:
        progress(stage, 0, total)
    for start, stop in _batches(total, batch_size):
        target = _unit(goals[start:stop], x1.device)
        with autocast(x1.device, bf16):
            trajectories = _encode(agent, x1, target, rates, encoder, beam_width, prior_weight, likelihood)
        final = trajectories.states[:, -1].float()
        squared += float((final - target).double().pow(2).sum())
        kept["images"].append(to_uint8(final).cpu())
        kept["codes"].append(trajectories.selections.cpu())
        kept["finals"].append(final.cpu() if keep_float else None)
        kept["states"].append(trajectories.states.float().cpu() if keep_states else None)
        if progress:
            progress(stage, stop, total)
    mse = squared / max(goals[:1].numel() * total, 1)
    return Reconstructions(mse, torch.cat(kept["images"]), torch.cat(kept["codes"]),
                           torch.cat(kept["finals"]) if keep_float else None,
                           torch.cat(kept["states"]) if keep_states else None)


def _encode(agent, x1: torch.Tensor, target: torch.Tensor, rates: torch.Tensor, encoder: str, beam_width: int,
            prior_weight: float, likelihood: str):
    """One batch of the chosen GC-agent's greedy rollouts (Trajectories)."""
    if encoder == "q":
        return greedy_reconstruction(agent, x1, target, rates, sigma=1.0)
    scoring = CandidateScoring(prior_weight, False, agent.selection if prior_weight else None,
                               agent.goal_value if encoder == "afterstate" else None, likelihood=likelihood)
    return lookahead_rollout(agent.proposal, x1, target, rates, 1.0, beam_width, scoring=scoring)


def available_encoders(agent) -> tuple[str, ...]:
    """The encoders this agent can run: the afterstate agent only where the model has its value network."""
    return tuple(e for e in ENCODERS if e != "afterstate" or getattr(agent, "goal_value", None) is not None)


def encoder_of(config: ExperimentConfig, override: str | None = None) -> dict:
    """reconstruct's encoder arguments for a model: the GC-agent it acted with, unless overridden.

    A model trained with a candidate-scoring behaviour encodes with it (same beam width and prior weight, greedy
    even where it acted stochastically); one trained by the paper's rule with its Q-network.
    """
    encoder = override or config.acting.behaviour
    prior = config.acting.prior_weight if encoder != "q" else 0.0
    return {"encoder": encoder, "beam_width": config.acting.beam_width, "prior_weight": prior,
            "likelihood": config.mdp.likelihood}


def sampling_of(config: ExperimentConfig, temperature: float | None = None, top_k: int | None = None) -> dict:
    """sample's S-select shaping for a model: its recipe's (config.sampling), unless overridden.

    top_k None or 0 is all A selections; temperature 1 and all A is the paper's plain sampling.
    """
    temperature = config.sampling.temperature if temperature is None else temperature
    top_k = config.sampling.top_k if top_k is None else top_k
    return {"temperature": temperature, "top_k": top_k or None}


@dataclass
class Samples:
    """S-agent samples: final states and the first few whole trajectories (for Figure 2)."""

    images: torch.Tensor  # [N, C, H, W] uint8
    codes: torch.Tensor  # [N, H] long
    trajectories: torch.Tensor  # [k, H+1, C, H, W] float


@torch.inference_mode()
def sample(agent, x1: torch.Tensor, rates: torch.Tensor, count: int, batch_size: int = 256, seed: int = 0,
           progress: Progress | None = None, keep_trajectories: int = 4, bf16: bool = False,
           temperature: float = 1.0, top_k: int | None = None) -> Samples:
    """Algorithm 3 for `count` samples in batches, from one seeded generator (reproducible per device).

    temperature and top_k shape S-select's distribution (rollout.selection_distribution; 1 and None: the paper's).
    """
    generator = torch.Generator(device=x1.device).manual_seed(seed)
    images, codes, kept = [], [], None
    if progress:
        progress("sample", 0, count)
    for start, stop in _batches(count, batch_size):
        with autocast(x1.device, bf16):
            trajectories = s_agent_sample(agent.proposal, agent.selection, x1, stop - start, rates, generator,
                                          temperature, top_k)
        images.append(to_uint8(trajectories.states[:, -1].float()).cpu())
        codes.append(trajectories.selections.cpu())
        kept = trajectories.states[:keep_trajectories].float().cpu() if kept is None else kept
        if progress:
            progress("sample", stop, count)
    return Samples(torch.cat(images), torch.cat(codes), kept)


@torch.inference_mode()
def decode(agent, x1: torch.Tensor, rates: torch.Tensor, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Codes [N, H] -> x_{H+1} [N, C, H, W] float on the CPU, through the unfolded proposal network."""
    finals = [unfold_proposals(agent.proposal, x1, codes[start:stop].to(x1.device, torch.long), rates).cpu()
              for start, stop in _batches(codes.shape[0], batch_size)]
    return torch.cat(finals)


@torch.inference_mode()
def s_agent_cross_entropy(agent, states: torch.Tensor, codes: torch.Tensor, bf16: bool = False) -> list[float]:
    """-log S-select(a_h | x_h, h) per step h along an encoder's trajectories: how well the S-agent imitates the
    GC-agent (the KL term of the paper's bound, up to the GC-agent's entropy). states [N, H+1, C, H, W] (as
    Reconstructions.states), codes [N, H] -> H floats; their mean is what the S-agent's update minimises."""
    per_step, prefix = [], codes.to(states.device, torch.long)  # a prefix prior reads a_<h only
    for h in range(codes.shape[1]):
        step = torch.full((codes.shape[0],), h, dtype=torch.long, device=states.device)
        with autocast(states.device, bf16):
            logits = selection_logits(agent.selection, states[:, h], step, prefix)
        per_step.append(float(selection_cross_entropy(logits.float(), codes[:, h].to(states.device))))
    return per_step


def mean_squared_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Per-pixel MSE of two image sets on the [-1, 1] scale (uint8 inputs are converted first)."""
    return float((_unit(a, "cpu").double() - _unit(b, "cpu").double()).pow(2).mean())
