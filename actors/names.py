"""How the processes of one Ray run find each other, and which errors mean a peer is gone.

Restartable actors find their peers by name rather than by handles passed to their constructor: Ray
cannot guarantee a restart whose constructor arguments live in the object store. The names live here,
below every process role that looks them up, so no role imports the driver's package.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

NAMESPACE = "gcrl"
PEER_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)  # a peer died or restarts


@dataclass(frozen=True)
class RunNames:
    """Names of one run's actors in the `gcrl` namespace."""

    run_id: str
    num_shards: int

    @property
    def coordinator(self) -> str:
        """Name of the run's notice board."""
        return f"gcrl-{self.run_id}-coordinator"

    def shard(self, index: int) -> str:
        """Name of replay shard `index`."""
        return f"gcrl-{self.run_id}-replay-{index}"

    def rollout(self, index: int) -> str:
        """Name of rollout actor `index` (tests and operators find actors by it)."""
        return f"gcrl-{self.run_id}-rollout-{index}"

    @property
    def evaluation(self) -> str:
        """Name of the evaluation actor (tests and operators find it by it)."""
        return f"gcrl-{self.run_id}-evaluation"

    def lookup(self) -> tuple:
        """(coordinator, [shards]) handles, from inside any process of the run."""
        coordinator = ray.get_actor(self.coordinator, namespace=NAMESPACE)
        return coordinator, [ray.get_actor(self.shard(i), namespace=NAMESPACE) for i in range(self.num_shards)]
