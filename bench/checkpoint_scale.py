#!/usr/bin/env python3
"""Replay at the `paper` preset's size: bytes per episode, memory, and the time and driver memory to checkpoint it.

    python bench/checkpoint_scale.py                       # 1 shard, float32 states
    python bench/checkpoint_scale.py --num-shards 2 --state-dtype float16

Fills S replay-shard actors on a local Ray to the preset's capacities with random episodes (MNIST-sized
states), then writes a checkpoint the way the driver does (each shard writes its own chunks; the driver
writes the learner file and the manifest) and reads it back into fresh shards the way --resume does. It
prints the seconds of each and the driver's peak resident memory above its level before (sampled every
5 ms). It prints figures only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from buffers.shard import ReplayShard  # noqa: E402
from common.storage.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from common.storage.messages import TrajectoryBatch, TrajectorySpec  # noqa: E402
from common.method.presets import PRESETS  # noqa: E402
from learner.builder import Builder  # noqa: E402

IMAGE = (1, 28, 28)
NUM_GOALS = 60_000
FILL_BATCH = 250  # episodes per insert message while filling


class PeakMemory(threading.Thread):
    """The highest resident set size of this process while it runs (sampled), to compare with a baseline."""

    def __init__(self, every: float = 0.005):
        super().__init__(daemon=True)
        self.every, self.base, self.peak, self._halt = every, resident_bytes(), resident_bytes(), threading.Event()

    def run(self) -> None:
        """Sample until stop()."""
        while not self._halt.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.every)

    def stop(self) -> float:
        """Stop sampling; the peak above the baseline, in bytes."""
        self._halt.set()
        self.join()
        return max(0, self.peak - self.base)


def resident_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=tuple(PRESETS), default="paper")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--state-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--output", type=Path, help="checkpoint folder (default: a temporary one, removed after)")
    args = p.parse_args(argv)
    if args.num_shards < 1:
        p.error(f"--num-shards must be at least 1, got {args.num_shards}")
    return args


def replay_settings(args: argparse.Namespace):
    """The preset's replay, with sampling gated off so inserts alone can fill it (capacities unchanged)."""
    config = PRESETS[args.preset]()
    replay = dataclasses.replace(config.replay, min_size_to_sample=config.replay.gc_capacity,
                                 state_dtype=args.state_dtype)
    config = dataclasses.replace(config, replay=replay, acting=dataclasses.replace(config.acting,
                                                                                  goals_per_rollout=FILL_BATCH))
    return config, replay, Builder(config, IMAGE, NUM_GOALS).trajectory_spec()


def layout_report(config, replay, spec: TrajectorySpec) -> None:
    """Bytes per episode and the whole replay, stored once (now) and per transition (format 1, before)."""
    tables = Builder(config, IMAGE, NUM_GOALS).make_replay_tables(0)
    h, state = spec.horizon, int(np.prod(IMAGE)) * 4
    before_episode = h * (2 * state + 2 + 2 + 4 + 8) + h * (state + 2 + 2) + h * 2 + 8  # format 1 columns
    before_total = (replay.gc_capacity * (2 * state + 16) + replay.selection_capacity * (state + 4)
                    + replay.proposal_capacity * (2 * h + 8))
    now_episode = tables.nbytes() // tables.episodes.capacity
    print(f"replay layout ({spec.horizon} steps, {IMAGE} images): before (each state 3x, float32) "
          f"{before_episode:,} bytes/episode, {before_total / 1e9:.2f} GB in all; now (once, {replay.state_dtype}) "
          f"~{now_episode:,} bytes/episode, {tables.nbytes() / 1e9:.2f} GB in all "
          f"({before_total / tables.nbytes():.1f}x less)", flush=True)


def fill(shards: list, spec: TrajectorySpec, episodes: int) -> None:
    """Random episodes until every shard holds its share of `episodes`."""
    rng, h = np.random.default_rng(0), spec.horizon
    for index, shard in enumerate(shards):
        share = -(-episodes // len(shards))
        for first in range(0, share, FILL_BATCH):
            b = min(FILL_BATCH, share - first)
            batch = TrajectoryBatch(rng.standard_normal((b, h + 1) + IMAGE, dtype=np.float32),
                                    rng.integers(0, spec.num_proposals, (b, h)).astype(np.int16),
                                    rng.integers(0, NUM_GOALS, b), np.ones(b, np.float32))
            assert ray.get(shard.insert.remote(batch.to_message(), 60.0)), "the limiter refused a fill insert"


def measure_save(shards: list, folder: Path) -> tuple[Path, float, float]:
    """(checkpoint path, seconds, driver peak bytes above baseline) of one checkpoint, written as the driver does."""
    peak = PeakMemory()
    peak.start()
    started = time.monotonic()

    def write_replay(staging: Path) -> dict:
        written = ray.get([s.write_checkpoint.remote(str(staging)) for s in shards])
        return {name: info for files in written for name, info in files.items()}

    path = save_checkpoint(folder, 1, b"learner state stand-in", write_replay, {}, keep=1)
    return path, time.monotonic() - started, peak.stop()


def measure_restore(shards: list, folder: Path) -> tuple[float, float]:
    """(seconds, driver peak bytes) to verify the checkpoint and have fresh shards read their parts."""
    peak = PeakMemory()
    peak.start()
    started = time.monotonic()
    checkpoint = load_checkpoint(folder)
    path = str(checkpoint.path)
    ray.get([s.read_checkpoint.remote(path, files) for s, files in zip(shards, checkpoint.replay_shards)])
    return time.monotonic() - started, peak.stop()


def make_shards(config, replay, spec: TrajectorySpec, count: int) -> list:
    """S replay shards with the preset's capacities split between them."""
    return [ReplayShard.remote(Builder(config, IMAGE, NUM_GOALS), count, i, 0) for i in range(count)]


def main(argv: list[str] | None = None) -> None:
    """Fill, checkpoint, restore; print the figures."""
    args = parse(argv)
    config, replay, spec = replay_settings(args)
    layout_report(config, replay, spec)
    folder = args.output or Path(tempfile.mkdtemp(prefix="gcrl-ckpt-"))
    ray.init(address="local", num_cpus=max(2, args.num_shards), include_dashboard=False, logging_level="ERROR")
    try:
        shards = make_shards(config, replay, spec, args.num_shards)
        started = time.monotonic()
        fill(shards, spec, replay.gc_capacity // spec.horizon)
        sizes = ray.get([s.stats.remote() for s in shards])
        print(f"filled {args.num_shards} shard(s) in {time.monotonic() - started:.1f}s: "
              + "; ".join(str(s["sizes"]) for s in sizes), flush=True)
        path, seconds, peak = measure_save(shards, folder)
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"checkpoint: {size / 1e9:.2f} GB in {len(list(path.iterdir()))} files, {seconds:.1f}s, "
              f"driver peak +{peak / 1e6:.0f} MB", flush=True)
        fresh = make_shards(config, replay, spec, args.num_shards)
        seconds, peak = measure_restore(fresh, folder)
        print(f"restore into fresh shards: {seconds:.1f}s, driver peak +{peak / 1e6:.0f} MB", flush=True)
    finally:
        ray.shutdown()
        if args.output is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
