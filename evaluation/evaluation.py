"""Evaluation of a trained model as section 4.2 of the paper measures it, plus its discrete codes.

- Reconstruction: the GC-agent's greedy rollout towards each test image (Algorithm 1 without the
  exploration malus); MSE per pixel on images scaled to [-1, 1].
- Samples: the S-agent alone (Algorithm 3).
- Codes: a reconstruction is fully described by the GC-agent's H selections, H*log2(A) bits; the
  unfolded proposal network (S-prop-net_{theta,U}) turns a code back into the image.

Functions take any object with the VAgent attributes `proposal`, `selection` and `goal_q`, so tests can
hand-build agents. Nothing here imports Ray; `PeriodicEvaluator` is the building block for training.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.storage.checkpoint import LEARNER_FILE, load_checkpoint
from common.method.config import BEHAVIOURS, ExperimentConfig
from common.storage.data import GoalSet, load_goals
from common.method.pixels import to_uint8, to_unit_range
from common.errors import CheckpointError, DataError, EvaluationError
from evaluation.fid import FidScorer, Progress, ReferenceCache, load_inception, reference_stats
from evaluation.figures import samples_figure
from common.method.lookahead import lookahead_rollout
from common.method.mdp import step_rates
from common.method.networks import VAgent
from common.method.rollout import greedy_reconstruction, s_agent_sample, unfold_proposals
from common.storage.run_state import config_from_manifest

ENCODERS = BEHAVIOURS  # the GC-agent that turns an image into a code is one of those that act (see reconstruct)
MSE_SCALE = "per-pixel mean squared error on images scaled to [-1, 1] (divide by 4 for the [0, 1] scale)"


@dataclass
class LoadedModel:
    """A checkpoint's agent on a device, with what evaluation must know about how it was trained."""

    agent: VAgent
    x1: torch.Tensor  # [C, H, W] on device
    rates: torch.Tensor  # [H] on device
    config: ExperimentConfig
    path: Path  # the resolved checkpoint folder
    manifest: dict
    device: torch.device

    @property
    def updates(self) -> int:
        """Learner steps the checkpoint had taken."""
        return int(self.manifest.get("updates", 0))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the networks were built for; data of another shape is refused."""
        return tuple(self.agent.image_shape)

    @property
    def dataset(self) -> dict:
        """{"name", "size", "image_shape", "fingerprint"} of the training goals."""
        return self.manifest.get("dataset") or {}

    @property
    def model_digest(self) -> str:
        """SHA-256 of learner.pt: codes are only meaningful for the weights that made them."""
        return str(self.manifest["files"][LEARNER_FILE].get("sha256", ""))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint folder (or a run's newest) into a VAgent; anything unfit is one CheckpointError line."""
    path = Path(path)
    if path.is_file():
        raise CheckpointError(f"checkpoint path {path} is a file, not a gcrl checkpoint: pass a checkpoint folder "
                              "(update-*/ with manifest.json) or a run's --checkpoint-dir")
    checkpoint = load_checkpoint(path, with_replay=False)
    config = config_from_manifest(checkpoint.manifest)
    shape = _manifest_shape(checkpoint.manifest, checkpoint.path)
    state = checkpoint.learner_state()
    agent = VAgent(shape, config.mdp, config.network)
    try:
        agent.load_state_dict(state["learner"]["agent"])
        x1 = state["x1"].float()
        if tuple(x1.shape) != shape:
            raise ValueError(f"x1 has shape {tuple(x1.shape)}, images are {shape}")
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{checkpoint.path} does not fit its own settings: {exc}".splitlines()[0]) from exc
    device = torch.device(device)
    agent.to(device).eval().requires_grad_(False)
    return LoadedModel(agent, x1.to(device), step_rates(config.mdp, device), config, checkpoint.path,
                       checkpoint.manifest, device)


def _manifest_shape(manifest: dict, where: Path) -> tuple[int, int, int]:
    shape = (manifest.get("dataset") or {}).get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise CheckpointError(f"{where}/manifest.json has no usable dataset.image_shape (got {shape!r})")
    return tuple(shape)


def load_split(model: LoadedModel, dataset: str | None, data_dir, split: str, download: bool = False) -> GoalSet:
    """A dataset split (default: the one the checkpoint trained on), refused if its images differ in shape."""
    goals = load_goals(dataset or model.dataset.get("name", "mnist"), data_dir, split, download)
    if goals.image_shape != model.image_shape:
        raise DataError(f"{goals.name} {split} images are {goals.image_shape} (C, H, W) but {model.path} was "
                        f"trained on {model.image_shape}")
    return goals


def _unit(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 or float [-1, 1] -> float32 [-1, 1] on device."""
    images = images.to(device)
    return to_unit_range(images) if images.dtype == torch.uint8 else images.float()


def _batches(total: int, batch_size: int):
    for start in range(0, total, batch_size):
        yield start, min(start + batch_size, total)


@dataclass
class Reconstructions:
    """The GC-agent's greedy reconstructions of a set of goals."""

    mse: float  # per pixel, [-1, 1] scale
    images: torch.Tensor  # [N, C, H, W] uint8 x_{H+1}, quantised as a saved image would be
    codes: torch.Tensor  # [N, H] long: the selections a_1..a_H
    finals: torch.Tensor | None = None  # [N, C, H, W] float x_{H+1}, when asked for (exact comparisons)


@torch.inference_mode()
def reconstruct(agent, x1: torch.Tensor, rates: torch.Tensor, goals: torch.Tensor, batch_size: int = 256,
                progress: Progress | None = None, stage: str = "reconstruct", keep_float: bool = False,
                encoder: str = "q", beam_width: int = 1) -> Reconstructions:
    """GC-agent rollouts towards `goals` [N, C, H, W] (uint8 or float [-1, 1]), batch by batch.

    encoder "q": the Q-network's greedy choices (Algorithm 1 without the malus, the paper's encoder);
    "lookahead": the lookahead extension with `beam_width` (common/method/lookahead.py).
    """
    if encoder not in ENCODERS:
        raise EvaluationError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    total, squared, images, codes, finals = goals.shape[0], 0.0, [], [], []
    if progress:
        progress(stage, 0, total)
    for start, stop in _batches(total, batch_size):
        target = _unit(goals[start:stop], x1.device)
        if encoder == "q":
            trajectories = greedy_reconstruction(agent, x1, target, rates, sigma=1.0)
        else:
            trajectories = lookahead_rollout(agent.proposal, x1, target, rates, 1.0, beam_width)
        final = trajectories.states[:, -1]
        squared += float((final - target).double().pow(2).sum())
        images.append(to_uint8(final).cpu())
        codes.append(trajectories.selections.cpu())
        if keep_float:
            finals.append(final.cpu())
        if progress:
            progress(stage, stop, total)
    mse = squared / max(goals[:1].numel() * total, 1)
    return Reconstructions(mse, torch.cat(images), torch.cat(codes), torch.cat(finals) if keep_float else None)


def encoder_of(config: ExperimentConfig, override: str | None = None) -> dict:
    """reconstruct's encoder arguments for a model: the GC-agent it acted with, unless overridden.

    A model trained with the lookahead behaviour encodes with the lookahead (same beam width); one
    trained by the paper's rule with its Q-network.
    """
    return {"encoder": override or config.acting.behaviour, "beam_width": config.acting.beam_width}


@dataclass
class Samples:
    """S-agent samples: final states and the first few whole trajectories (for Figure 2)."""

    images: torch.Tensor  # [N, C, H, W] uint8
    codes: torch.Tensor  # [N, H] long
    trajectories: torch.Tensor  # [k, H+1, C, H, W] float


@torch.inference_mode()
def sample(agent, x1: torch.Tensor, rates: torch.Tensor, count: int, batch_size: int = 256, seed: int = 0,
           progress: Progress | None = None, keep_trajectories: int = 4) -> Samples:
    """Algorithm 3 for `count` samples in batches, from one seeded generator (reproducible per device)."""
    generator = torch.Generator(device=x1.device).manual_seed(seed)
    images, codes, kept = [], [], None
    if progress:
        progress("sample", 0, count)
    for start, stop in _batches(count, batch_size):
        trajectories = s_agent_sample(agent.proposal, agent.selection, x1, stop - start, rates, generator)
        images.append(to_uint8(trajectories.states[:, -1]).cpu())
        codes.append(trajectories.selections.cpu())
        kept = trajectories.states[:keep_trajectories].cpu() if kept is None else kept
        if progress:
            progress("sample", stop, count)
    return Samples(torch.cat(images), torch.cat(codes), kept)


@torch.inference_mode()
def decode(agent, x1: torch.Tensor, rates: torch.Tensor, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Codes [N, H] -> x_{H+1} [N, C, H, W] float on the CPU, through the unfolded proposal network."""
    finals = [unfold_proposals(agent.proposal, x1, codes[start:stop].to(x1.device, torch.long), rates).cpu()
              for start, stop in _batches(codes.shape[0], batch_size)]
    return torch.cat(finals)


def mean_squared_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Per-pixel MSE of two image sets on the [-1, 1] scale (uint8 inputs are converted first)."""
    return float((_unit(a, "cpu").double() - _unit(b, "cpu").double()).pow(2).mean())


def bits_per_image(horizon: int, num_proposals: int) -> float:
    """Length of a code: H selections among A, H*log2(A) bits."""
    return horizon * math.log2(num_proposals)


def code_dtype(num_proposals: int) -> np.dtype:
    """The smallest unsigned type that holds a selection."""
    return np.dtype(np.uint8 if num_proposals <= 256 else np.uint16 if num_proposals <= 65536 else np.uint32)


def save_codes(path: str | Path, codes: torch.Tensor, model: LoadedModel) -> Path:
    """Write codes [N, H] with H, A, bits per image, the training data fingerprint and the model digest."""
    mdp = model.config.mdp
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # a handle keeps the exact name (np.savez would append .npz)
        np.savez(handle, codes=codes.numpy().astype(code_dtype(mdp.num_proposals)),
                 horizon=np.int64(mdp.horizon), num_proposals=np.int64(mdp.num_proposals),
                 bits_per_image=np.float64(bits_per_image(mdp.horizon, mdp.num_proposals)),
                 fingerprint=np.str_(model.dataset.get("fingerprint", "")), model=np.str_(model.model_digest))
    return path


def load_codes(path: str | Path, model: LoadedModel) -> torch.Tensor:
    """Read and check a codes file against the checkpoint; anything unfit is one EvaluationError line."""
    path = Path(path)
    try:
        data, fields = np.load(path, allow_pickle=False), None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                fields = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise EvaluationError(f"codes file {path} cannot be read as an .npz from `encode`: {exc}"
                              .splitlines()[0]) from exc
    if fields is None:
        raise EvaluationError(f"codes file {path} is a single array, not the .npz that `encode` writes")
    try:
        _check_codes(path, fields, model)
    except EvaluationError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. a non-scalar 'horizon' in a foreign file
        raise EvaluationError(f"codes file {path} has malformed fields: {exc}".splitlines()[0]) from exc
    return torch.from_numpy(fields["codes"].astype(np.int64))


def _check_codes(path: Path, fields: dict, model: LoadedModel) -> None:
    mdp = model.config.mdp
    codes = fields.get("codes")
    if codes is None:
        raise EvaluationError(f"codes file {path} holds no 'codes' array (found {', '.join(fields) or 'nothing'})")
    if codes.ndim != 2 or codes.shape[1] != mdp.horizon or codes.shape[0] == 0:
        raise EvaluationError(f"codes in {path} have shape {codes.shape}, expected [N, {mdp.horizon}] for H = "
                              f"{mdp.horizon}")
    if codes.dtype.kind not in "ui":
        raise EvaluationError(f"codes in {path} are {codes.dtype}, expected unsigned integers")
    if codes.min() < 0 or codes.max() >= mdp.num_proposals:
        raise EvaluationError(f"codes in {path} range over [{codes.min()}, {codes.max()}], expected selections "
                              f"in [0, {mdp.num_proposals}) for A = {mdp.num_proposals}")
    for name, expected in (("horizon", mdp.horizon), ("num_proposals", mdp.num_proposals)):
        if name in fields and int(fields[name]) != expected:
            raise EvaluationError(f"codes in {path} were made with {name} = {int(fields[name])}, this checkpoint "
                                  f"has {expected}")
    if "model" in fields and str(fields["model"]) not in ("", model.model_digest):
        raise EvaluationError(f"codes in {path} were encoded by another model (learner.pt {str(fields['model'])[:12]}"
                              f", this checkpoint has {model.model_digest[:12]}); decode with that checkpoint")


def load_image_file(path: str | Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 images from a .npy ([N, C, H, W], or [N, H, W] for one channel), checked against the model."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise EvaluationError(f"image file {path} cannot be read as a .npy array: {exc}".splitlines()[0]) from exc
    if array.ndim == 3 and image_shape[0] == 1:
        array = array[:, None]
    if array.dtype != np.uint8 or array.ndim != 4 or tuple(array.shape[1:]) != tuple(image_shape):
        raise EvaluationError(f"image file {path} holds {array.dtype} {array.shape}, expected uint8 "
                              f"[N, {', '.join(map(str, image_shape))}]")
    return torch.from_numpy(array.copy())


def write_json(path: str | Path, data: dict) -> Path:
    """Pretty JSON, creating the folder; written under a temporary name and renamed, so a process killed
    mid-write (an evaluation actor at the end of a run) never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(staging, path)
    return path


def training_scorer(train_goals: GoalSet, count: int | None = None, inception: str | Path | None = None,
                    cache_dir: str | Path | None = None, device="cpu", batch_size: int = 50) -> FidScorer:
    """A FidScorer holding the training set's reference statistics, for PeriodicEvaluator."""
    scorer = FidScorer(load_inception(inception, device), batch_size)
    scorer.reference = reference_stats(scorer, train_goals, count, ReferenceCache(cache_dir))
    return scorer


class PeriodicEvaluator:
    """The small evaluation to run every so often during training, on a fixed test batch.

    Reconstruction MSE of `test_goals` [B, C, H, W] (float in [-1, 1]), a grid of S-agent samples, and,
    when `fid_samples` > 0 and a scorer with training-set reference statistics is given, the FID of
    that many samples. Samples come from a fixed seed, so grids of successive evaluations compare.
    With fid_samples == 0 the cost is one greedy rollout of the batch and `grid_samples` samples.
    """

    def __init__(self, config: ExperimentConfig, test_goals: torch.Tensor, run_dir: str | Path | None,
                 fid_samples: int = 0, scorer: FidScorer | None = None, grid_samples: int = 64,
                 batch_size: int = 256, seed: int = 0):
        self.config, self.test_goals = config, test_goals
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.fid_samples = fid_samples if scorer is not None else 0
        self.scorer, self.grid_samples, self.batch_size, self.seed = scorer, grid_samples, batch_size, seed

    def evaluate(self, agent, x1: torch.Tensor, updates: int) -> dict:
        """{"reconstruction_mse": float, "sample_fid": float | None}; also writes eval/eval-<updates>.json
        and eval/samples-<updates>.png under the run folder."""
        rates = step_rates(self.config.mdp, x1.device)
        mse = reconstruct(agent, x1, rates, self.test_goals, self.batch_size, **encoder_of(self.config)).mse
        count = max(self.grid_samples, self.fid_samples)
        samples = sample(agent, x1, rates, count, self.batch_size, self.seed, keep_trajectories=0)
        fid = self.scorer.score(samples.images[:self.fid_samples]) if self.fid_samples > 0 else None
        if self.run_dir is None:  # a run without --checkpoint-dir: report, write nothing
            return {"reconstruction_mse": mse, "sample_fid": fid}
        folder = self.run_dir / "eval"
        write_json(folder / f"eval-{updates}.json",
                   {"updates": updates, "reconstruction_mse": mse, "reconstruction_mse_scale": MSE_SCALE,
                    "num_test": int(self.test_goals.shape[0]), "sample_fid": fid, "fid_samples": self.fid_samples})
        samples_figure(samples.images[:self.grid_samples], folder / f"samples-{updates}.png")
        return {"reconstruction_mse": mse, "sample_fid": fid}
