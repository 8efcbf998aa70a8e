"""Checkpoints that a crash cannot corrupt and that a foreign file cannot impersonate.

A checkpoint is a folder `update-<N>` holding the learner state (torch.save of tensors and plain
containers, loaded with weights_only=True), one msgpack file per replay shard, and `manifest.json`
written last with each file's size and SHA-256. The folder is built under a temporary name and
renamed, so the newest complete checkpoint is always whole; loading re-checks every digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import CheckpointError

FORMAT = "gcrl-checkpoint"
FORMAT_VERSION = 1
NAME = re.compile(r"^update-(\d{9})$")
LEARNER_FILE = "learner.pt"
REPLAY_NAME = re.compile(r"^replay-(\d+)\.msgpack$")


@dataclass
class Checkpoint:
    """What a run needs to continue: its manifest, the learner state and each shard's replay bytes."""

    path: Path
    manifest: dict  # format, updates, config, dataset fingerprint, files
    learner_bytes: bytes  # torch.save of the learner state; decode with learner_state()
    replay_shards: list[bytes]

    def learner_state(self, map_location="cpu") -> dict:
        """The learner state, read with weights_only=True: tensors and plain containers only."""
        return decode_learner_state(self.learner_bytes, self.path / LEARNER_FILE, map_location)


def encode_learner_state(state: dict) -> bytes:
    """torch.save to bytes, so the state can travel from a learner process to the checkpoint writer."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def decode_learner_state(data: bytes, where: str | Path, map_location="cpu") -> dict:
    """Inverse of encode_learner_state; never unpickles anything but tensors and plain containers."""
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad archives
        raise CheckpointError(f"{where} cannot be read as a learner state: {exc}".splitlines()[0]) from exc
    if not isinstance(state, dict) or "learner" not in state:
        raise CheckpointError(f"{where} is not a gcrl learner state (no 'learner' entry)")
    return state


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in blocks: what manifests (and the FID cache's key) record."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(directory: str | Path, updates: int, learner_bytes: bytes, replay_shards: list[bytes],
                    meta: dict, keep: int = 3) -> Path:
    """Write update-<updates> atomically, then drop all but the newest `keep` complete checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"update-{updates:09d}"
    staging = directory / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    _write_bytes(staging / LEARNER_FILE, learner_bytes)
    names = [LEARNER_FILE]
    for index, payload in enumerate(replay_shards):
        names.append(f"replay-{index}.msgpack")
        _write_bytes(staging / names[-1], payload)
    files = {n: {"bytes": (staging / n).stat().st_size, "sha256": file_digest(staging / n)} for n in names}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "updates": updates,
                "created": time.time(), "files": files, **meta}
    _write_bytes(staging / "manifest.json", json.dumps(manifest, indent=1).encode())
    if final.exists():  # the same update count saved again (e.g. on exit right after a periodic save)
        shutil.rmtree(final)
    os.replace(staging, final)
    _prune(directory, keep)
    return final


def _prune(directory: Path, keep: int) -> None:
    for old in complete_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(directory: str | Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (staging folders and strays are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if NAME.match(p.name) and (p / "manifest.json").exists()]
    return sorted(found, key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest complete one inside a run's checkpoint directory."""
    path = Path(path)
    if (path / "manifest.json").exists():
        return path
    found = complete_checkpoints(path)
    if not found:
        what = "does not exist" if not path.exists() else "holds no complete checkpoint (update-*/manifest.json)"
        raise CheckpointError(f"checkpoint path {path} {what}")
    return found[-1]


def load_checkpoint(path: str | Path, with_replay: bool = True) -> Checkpoint:
    """Load and verify a checkpoint; refuses foreign, truncated or altered files with one line.

    with_replay=False reads only the learner state (evaluation needs no replay, which can be gigabytes).
    """
    path = resolve_checkpoint(path)
    manifest = _read_manifest(path)
    names = [n for n in manifest["files"] if with_replay or n == LEARNER_FILE]
    for name in names:
        _verify_file(path / name, manifest["files"][name])
    shards = sorted((n for n in names if REPLAY_NAME.match(n)), key=lambda n: int(REPLAY_NAME.match(n)[1]))
    return Checkpoint(path, manifest, (path / LEARNER_FILE).read_bytes(), [(path / n).read_bytes() for n in shards])


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / 'manifest.json'} is not readable JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gcrl checkpoint (manifest format is "
                              f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {manifest.get('format_version')!r}, "
                              f"this code reads version {FORMAT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or LEARNER_FILE not in files:
        raise CheckpointError(f"{path}/manifest.json lists no {LEARNER_FILE}")
    for name, info in files.items():
        if (name != LEARNER_FILE and not REPLAY_NAME.match(name)) or not isinstance(info, dict):
            raise CheckpointError(f"{path}/manifest.json lists an unexpected file entry {name!r}")
    return manifest


def _verify_file(path: Path, info: dict) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing")
    size = path.stat().st_size
    if size != info.get("bytes"):
        raise CheckpointError(f"checkpoint file {path} is {size} bytes, the manifest says {info.get('bytes')} "
                              "(truncated or replaced)")
    if file_digest(path) != info.get("sha256"):
        raise CheckpointError(f"checkpoint file {path} does not match its SHA-256 in the manifest (corrupt)")
