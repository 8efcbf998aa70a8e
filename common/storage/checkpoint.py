"""Checkpoints that a crash cannot corrupt and that a foreign file cannot impersonate.

A checkpoint is a folder `update-<N>` holding the learner state (torch.save of tensors and plain
containers, loaded with weights_only=True), each replay shard's files (a header and bounded chunks of
episodes, written by the shard itself: buffers/replay_files.py), and `manifest.json` written last with
each file's size and SHA-256. The folder is built under a temporary name and renamed, so the newest
complete checkpoint is always whole; loading re-checks every digest.
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
from typing import Callable

import torch

from common.errors import CheckpointError

FORMAT = "gcrl-checkpoint"
FORMAT_VERSION = 2  # 1: one msgpack file per shard, each state stored three times (learner state still readable)
LEARNER_READABLE_VERSIONS = (1, 2)
NAME = re.compile(r"^update-(\d{9})$")
LEARNER_FILE = "learner.pt"
REPLAY_NAME = re.compile(r"^replay-(\d+)(?:-c\d+)?\.msgpack$")  # replay-<shard>.msgpack, replay-<shard>-c<k>.msgpack


@dataclass
class Checkpoint:
    """What a run needs to continue: its manifest, the learner state and each shard's replay files."""

    path: Path
    manifest: dict  # format, updates, config, dataset fingerprint, files
    learner_bytes: bytes  # torch.save of the learner state; decode with learner_state()
    replay_shards: list[dict[str, dict]]  # per shard: {file name: {"bytes", "sha256"}}, read by the shard itself

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


def write_file(path: Path, data: bytes) -> dict:
    """Write and fsync one checkpoint file; returns its manifest entry {"bytes", "sha256"}."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_file(path: Path, info: dict) -> bytes:
    """One checkpoint file's bytes, refused in one line unless size and SHA-256 match its manifest entry."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint file {path} cannot be read ({exc.strerror})") from exc
    if len(data) != info.get("bytes") or hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"checkpoint file {path} does not match its size and SHA-256 in the manifest")
    return data


def save_checkpoint(directory: str | Path, updates: int, learner_bytes: bytes,
                    write_replay: Callable[[Path], dict[str, dict]], meta: dict, keep: int = 3) -> Path:
    """Write update-<updates> atomically, then drop all but the newest `keep` complete checkpoints.

    write_replay(staging folder) writes the replay files (in the shards' own processes on Ray) and
    returns their manifest entries; the manifest is written last, then the folder is renamed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"update-{updates:09d}"
    staging = directory / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        files = {LEARNER_FILE: write_file(staging / LEARNER_FILE, learner_bytes), **write_replay(staging)}
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "updates": updates,
                "created": time.time(), "files": files, **meta}
    write_file(staging / "manifest.json", json.dumps(manifest, indent=1).encode())
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
    Replay files are digest-checked here, block by block, but not loaded: each shard reads its own.
    """
    path = resolve_checkpoint(path)
    manifest = read_manifest(path, with_replay)
    names = [n for n in manifest["files"] if with_replay or n == LEARNER_FILE]
    for name in names:
        verify_file(path / name, manifest["files"][name])
    shards = replay_files(manifest, path) if with_replay else []
    return Checkpoint(path, manifest, (path / LEARNER_FILE).read_bytes(), shards)


def replay_files(manifest: dict, path: Path | str = "checkpoint") -> list[dict[str, dict]]:
    """The manifest's replay files grouped by shard, [{name: info}] in shard order; each shard needs its header."""
    grouped: dict[int, dict[str, dict]] = {}
    for name, info in manifest["files"].items():
        match = REPLAY_NAME.match(name)
        if match:
            grouped.setdefault(int(match[1]), {})[name] = info
    if sorted(grouped) != list(range(len(grouped))) or any(f"replay-{i}.msgpack" not in grouped[i] for i in grouped):
        raise CheckpointError(f"{path}/manifest.json lists replay files of shards {sorted(grouped)} without a "
                              "header (replay-<i>.msgpack) for each of 0..S-1")
    return [grouped[i] for i in range(len(grouped))]


def read_manifest(path: Path, with_replay: bool = True) -> dict:
    """The checked manifest of checkpoint folder `path`; format 1 only when the replay is not wanted."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / 'manifest.json'} is not readable JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gcrl checkpoint (manifest format is "
                              f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version == 1 and with_replay:
        raise CheckpointError(f"{path} has checkpoint format 1 (replay stored per transition), which this version "
                              "cannot resume; `launch.py evaluate` and `sample` still read its learner state")
    if version not in LEARNER_READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}, "
                              f"this code reads version {FORMAT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict) or LEARNER_FILE not in files:
        raise CheckpointError(f"{path}/manifest.json lists no {LEARNER_FILE}")
    for name, info in files.items():
        if (name != LEARNER_FILE and not REPLAY_NAME.match(name)) or not isinstance(info, dict):
            raise CheckpointError(f"{path}/manifest.json lists an unexpected file entry {name!r}")
    return manifest


def verify_file(path: Path, info: dict) -> None:
    """Refuse a checkpoint file whose size or SHA-256 differs from its manifest entry (read in blocks)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing")
    size = path.stat().st_size
    if size != info.get("bytes"):
        raise CheckpointError(f"checkpoint file {path} is {size} bytes, the manifest says {info.get('bytes')} "
                              "(truncated or replaced)")
    if file_digest(path) != info.get("sha256"):
        raise CheckpointError(f"checkpoint file {path} does not match its SHA-256 in the manifest (corrupt)")
