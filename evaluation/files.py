"""The files evaluation reads and writes: codes, image arrays and JSON reports.

A code is the GC-agent's H selections among A proposals, H*log2(A) bits; a codes file carries, beside
them, what a decoder must check (H, A, the training data's fingerprint and the model's digest), so a
code is never decoded by weights other than those that made it.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from common.errors import EvaluationError
from evaluation.model import LoadedModel


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
    """Refuse codes of the wrong shape, type or range, or made by another model, in one line each."""
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
    made_by = str(fields["model"]) if "model" in fields else ""
    if made_by not in ("", model.model_digest):
        if made_by.split(":")[0] == model.model_digest.split(":")[0]:  # the same checkpoint, the other weights
            used = "averaged" if made_by.endswith(":averaged") else "online"
            raise EvaluationError(f"codes in {path} were encoded with this checkpoint's {used} weights, not its "
                                  f"{model.weights} ones; decode with --weights {used}")
        raise EvaluationError(f"codes in {path} were encoded by another model (learner.pt {made_by[:12]}"
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
