"""A trained model as evaluation sees it: a checkpoint's agent on a device, and the data it may meet.

The agent is built by learner/builder.py's Builder, the one place agents are made, so a checkpoint of
either runtime loads here into exactly the networks it was trained with. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import CheckpointError, DataError
from common.method.config import ExperimentConfig
from common.method.mdp import step_rates
from common.method.networks import VAgent
from common.storage.checkpoint import LEARNER_FILE, load_checkpoint
from common.storage.data import GoalSet, load_goals
from common.storage.run_state import config_from_manifest
from learner.builder import Builder
from learner.learning import AVERAGED


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
    weights: str = "online"  # "averaged" where the averaged S-agent was loaded (load_model's `weights`)

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
        """SHA-256 of learner.pt (and ":averaged" when the averaged S-agent was read): codes are only meaningful for
        the weights that made them."""
        digest = str(self.manifest["files"][LEARNER_FILE].get("sha256", ""))
        return digest + ":averaged" if self.weights == "averaged" else digest


WEIGHTS = ("averaged", "online")  # which S-agent a checkpoint made with learning.averaging_rate is read as


def load_model(path: str | Path, device: torch.device | str = "cpu", weights: str = "averaged") -> LoadedModel:
    """Load a checkpoint folder (or a run's newest) into a VAgent; anything unfit is one CheckpointError line.

    `weights`: "averaged" reads the averaged S-agent where the checkpoint has one (learning.averaging_rate), what the
    run's recipe samples with; "online" the weights the GC-agent acted with. Without averaging both are the same.
    """
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights {weights!r} is not one of {', '.join(WEIGHTS)}")
    path = Path(path)
    if path.is_file():
        raise CheckpointError(f"checkpoint path {path} is a file, not a gcrl checkpoint: pass a checkpoint folder "
                              "(update-*/ with manifest.json) or a run's --checkpoint-dir")
    checkpoint = load_checkpoint(path, with_replay=False)
    config = config_from_manifest(checkpoint.manifest)
    shape = _manifest_shape(checkpoint.manifest, checkpoint.path)
    state = checkpoint.learner_state()
    agent = Builder(config, shape, _manifest_size(checkpoint.manifest)).make_agent()
    try:
        agent.load_state_dict(state["learner"]["agent"])
        averaged = state["learner"].get("averaged", {}) if weights == "averaged" else {}
        for kind in (k for k in AVERAGED if k in averaged):
            getattr(agent, kind).load_state_dict(averaged[kind])
        x1 = state["x1"].float()
        if tuple(x1.shape) != shape:
            raise ValueError(f"x1 has shape {tuple(x1.shape)}, images are {shape}")
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{checkpoint.path} does not fit its own settings: {exc}".splitlines()[0]) from exc
    device = torch.device(device)
    agent.to(device).eval().requires_grad_(False)
    return LoadedModel(agent, x1.to(device), step_rates(config.mdp, device), config, checkpoint.path,
                       checkpoint.manifest, device, "averaged" if averaged else "online")


def _manifest_shape(manifest: dict, where: Path) -> tuple[int, int, int]:
    """The (C, H, W) the checkpoint was trained on, as its manifest records it."""
    shape = (manifest.get("dataset") or {}).get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise CheckpointError(f"{where}/manifest.json has no usable dataset.image_shape (got {shape!r})")
    return tuple(shape)


def _manifest_size(manifest: dict) -> int:
    """The number of training goals the manifest records, or 0 when it records none (the agent needs none)."""
    size = (manifest.get("dataset") or {}).get("size")
    return size if isinstance(size, int) and size >= 0 else 0


def load_split(model: LoadedModel, dataset: str | None, data_dir, split: str, download: bool = False) -> GoalSet:
    """A dataset split (default: the one the checkpoint trained on), refused if its images differ in shape."""
    goals = load_goals(dataset or model.dataset.get("name", "mnist"), data_dir, split, download)
    if goals.image_shape != model.image_shape:
        raise DataError(f"{goals.name} {split} images are {goals.image_shape} (C, H, W) but {model.path} was "
                        f"trained on {model.image_shape}")
    return goals
