"""Run state that checkpoints carry besides weights: what the run was, and its random streams.

Random states are kept as plain ints, strings and tensors so that torch.load(weights_only=True) and
msgpack can read them back; nothing here needs pickle.
"""

from __future__ import annotations

import numpy as np
import torch

from common.method.config import ExperimentConfig
from common.storage.data import GoalSet
from common.errors import CheckpointError, ConfigError


def checkpoint_meta(config: ExperimentConfig, goals: GoalSet, preset_name: str, runtime: str) -> dict:
    """The manifest fields that let a later run (or evaluation) check it is looking at the right thing."""
    return {"config": config.to_dict(), "preset": preset_name, "runtime": runtime,
            "dataset": {"name": goals.name, "size": len(goals), "image_shape": list(goals.image_shape),
                        "fingerprint": goals.fingerprint()}}


def config_from_manifest(manifest: dict) -> ExperimentConfig:
    """The settings a checkpoint was trained with; a damaged entry is a CheckpointError.

    Checkpoints written before mdp.loss_reduction existed were trained with the per-pixel loss ("mean").
    """
    try:
        config = manifest["config"]
        if isinstance(config, dict) and isinstance(config.get("mdp"), dict) and "loss_reduction" not in config["mdp"]:
            config = {**config, "mdp": {**config["mdp"], "loss_reduction": "mean"}}
        return ExperimentConfig.from_dict(config, source="checkpoint config")
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint manifest has no usable config: {exc}") from exc


SPEED_ONLY = (("acting", "bf16"), ("learning", "bf16"))  # precision may change on resume (other hardware)


def check_compatible(manifest: dict, config: ExperimentConfig, goals: GoalSet) -> None:
    """Refuse to resume a run on other data or other settings: replay holds goal indices and shapes.

    The bf16 settings are left out: they change speed, not the model, and "auto" re-resolves on the
    hardware a run resumes on (the checkpoint records what the learner resolved, under "precision").
    """
    saved, wanted = config_from_manifest(manifest).to_dict(), config.to_dict()
    for section, name in SPEED_ONLY:
        saved[section][name] = wanted[section][name]
    if saved != wanted:
        diffs = [f"{section}.{name}" for section, values in wanted.items()
                 for name, value in values.items() if saved[section][name] != value]
        raise CheckpointError(f"checkpoint was trained with other settings ({', '.join(diffs[:4])}); "
                              "resume with the same preset and config, or use a new --checkpoint-dir")
    fingerprint = manifest.get("dataset", {}).get("fingerprint")
    if fingerprint != goals.fingerprint():
        raise CheckpointError(f"checkpoint was trained on {fingerprint}, this run loads {goals.fingerprint()}; "
                              "its replay indexes other goals")


def rng_state() -> torch.Tensor:
    """torch's CPU generator state (a uint8 tensor)."""
    return torch.get_rng_state()


def set_rng_state(state: torch.Tensor) -> None:
    """Continue torch's CPU random stream where a checkpoint left it."""
    torch.set_rng_state(state)


def numpy_rng_to_text(rng: np.random.Generator) -> dict:
    """numpy's generator state with its 128-bit integers as strings, which msgpack and torch can carry."""
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": {k: str(v) for k, v in state["state"].items()},
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def numpy_rng_from_text(text: dict) -> dict:
    """Inverse of numpy_rng_to_text, ready for `rng.bit_generator.state = ...`."""
    return {"bit_generator": text["bit_generator"], "state": {k: int(v) for k, v in text["state"].items()},
            "has_uint32": int(text["has_uint32"]), "uinteger": int(text["uinteger"])}
