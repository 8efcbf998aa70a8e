"""Keeping the learner alive: when its process dies, start a new one from the newest checkpoint.

Ray restarts rollout actors and replay shards by itself (they hold nothing a checkpoint or the next
rollout cannot rebuild), but a learner restarted by Ray would come back with fresh networks. So the
learner has max_restarts=0 and the driver supervises it: on its loss, a new learner is made from the
newest complete checkpoint (or from scratch when none exists), while shards and rollout actors keep
running and pick up the new learner's weights from the coordinator. After --max-learner-restarts the
run ends with one line naming the checkpoint to resume from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import ray

from common.storage.checkpoint import complete_checkpoints, load_checkpoint
from actors.names import PEER_FAILURES
from common.errors import UserError


class LearnerLost(UserError):
    """The learner died more often than --max-learner-restarts allows."""


class LearnerSupervisor:
    """Owns the learner handle; train() answers like LearnerActor.train, restarting the learner if it died."""

    def __init__(self, make: Callable[[bytes | None], object], checkpoint_dir: Path | None, max_restarts: int,
                 on_restart: Callable[[dict], None], state: bytes | None = None):
        self.make, self.checkpoint_dir, self.max_restarts = make, checkpoint_dir, max_restarts
        self.on_restart = on_restart  # told the new learner's stats, so metrics can re-baseline
        self.handle = make(state)
        self.restarts, self.updates_lost, self.last_steps = 0, 0, 0

    def train(self, seconds: float, max_steps: int) -> dict:
        """One slice of learning; if the learner is gone, a restarted learner's stats instead."""
        try:
            stats = ray.get(self.handle.train.remote(seconds, max_steps))
        except PEER_FAILURES as exc:
            return self.restart(exc)
        self.last_steps = stats["steps"]
        return stats

    def restart(self, exc: Exception) -> dict:
        """Replace the dead learner from the newest checkpoint; LearnerLost past the limit."""
        self.restarts += 1
        newest = self._newest()
        if self.restarts > self.max_restarts:
            raise LearnerLost(f"the learner died {self.restarts} times ({type(exc).__name__}), more than "
                              f"--max-learner-restarts {self.max_restarts}; "
                              + (f"resume from {newest} with --resume --checkpoint-dir {self.checkpoint_dir}"
                                 if newest else "no checkpoint was written to resume from"))
        checkpoint = load_checkpoint(newest, with_replay=False) if newest else None
        resumed = checkpoint.manifest["updates"] if checkpoint else 0
        ray.kill(self.handle, no_restart=True)
        self.handle = self.make(checkpoint.learner_bytes if checkpoint else None)
        stats = ray.get(self.handle.stats.remote())
        lost = max(0, self.last_steps - resumed)
        self.updates_lost += lost
        print(f"learner died ({type(exc).__name__}) after update {self.last_steps}; restarted "
              f"{f'from {newest}' if newest else 'from scratch (no checkpoint yet)'} at update {resumed}: "
              f"{lost} updates lost (restart {self.restarts} of {self.max_restarts})", flush=True)
        self.last_steps = stats["steps"]
        self.on_restart(stats)
        return stats

    def _newest(self) -> Path | None:
        found = complete_checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []
        return found[-1] if found else None
