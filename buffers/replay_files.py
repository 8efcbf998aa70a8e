"""A replay shard's part of a checkpoint: written and read by the shard itself, in bounded chunks.

Each shard writes `replay-<i>-c<k>.msgpack` chunks of at most about CHUNK_BYTES of episodes, then its
header `replay-<i>.msgpack` (S-prop sequences, counters, limiter, random state, chunk names), and returns
their manifest entries; the checkpoint writer puts them in the manifest, written last. So replay never
passes through the driver, shards write in parallel, and no process holds a second full copy. Reading
checks every file's digest before the shard's contents change.
"""

from __future__ import annotations

from pathlib import Path

from buffers.tables import ReplayTables
from common.storage.checkpoint import (read_manifest, verify_file, complete_checkpoints, read_file, replay_files,
                               write_file)
from common.errors import CheckpointError

CHUNK_BYTES = 64 << 20  # bound on one chunk file, and so on the extra memory a shard needs to write or read


def header_name(index: int) -> str:
    """The file naming shard `index`'s chunks and holding its counters."""
    return f"replay-{index}.msgpack"


def write_shard(tables: ReplayTables, folder: str | Path, index: int, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Write shard `index` into a checkpoint's staging folder; returns {file name: {"bytes", "sha256"}}."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} is not visible to replay shard {index}; on a cluster "
                              "--checkpoint-dir must be on a filesystem every node mounts")
    files, chunks = {}, []
    for k, payload in enumerate(tables.episode_chunks(chunk_bytes)):
        chunks.append(f"replay-{index}-c{k:06d}.msgpack")
        files[chunks[-1]] = write_file(folder / chunks[-1], payload)
    files[header_name(index)] = write_file(folder / header_name(index), tables.header_message(chunks))
    return files


def read_shard(tables: ReplayTables, folder: str | Path, index: int, files: dict[str, dict]) -> None:
    """Refill `tables` from shard `index`'s files of a checkpoint, every digest checked first."""
    folder = Path(folder)
    if header_name(index) not in files:
        raise CheckpointError(f"{folder} holds no replay header {header_name(index)}")
    for name, info in sorted(files.items()):
        verify_file(folder / name, info)

    def chunk(name: str) -> bytes:
        if name not in files:
            raise CheckpointError(f"{folder}/{header_name(index)} names a chunk {name!r} the manifest lacks")
        return read_file(folder / name, files[name])

    tables.restore(read_file(folder / header_name(index), files[header_name(index)]), chunk)


def restore_newest(tables: ReplayTables, directory: str | Path, index: int, num_shards: int) -> Path | None:
    """Refill shard `index` from the newest complete checkpoint in `directory` (None if there is none)."""
    found = complete_checkpoints(directory)
    if not found:
        return None
    shards = replay_files(read_manifest(found[-1]), found[-1])
    if len(shards) != num_shards:
        raise CheckpointError(f"{found[-1]} holds {len(shards)} replay shards, this run has {num_shards}")
    read_shard(tables, found[-1], index, shards[index])
    return found[-1]
