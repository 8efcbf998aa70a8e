"""Which of a run's processes Ray has placed, and what the cluster lacks for the others.

Ray keeps an actor it cannot place pending, silently, until resources appear: on a cluster the autoscaler may
add a node, or nothing ever comes. The driver tracks every process's readiness (each actor's built-in
`__ray_ready__` call, answered once its constructor ran), so progress lines say how many of each role run and
what the rest wait for, the driver never blocks on a process that is not there, and a run that made no
learner update can say why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import ray

from deploy.placement import amount

ROLES = ("rollout", "replay", "learner", "evaluation")  # the order progress lines name them in


@dataclass(frozen=True)
class Ask:
    """What one process asks of the cluster."""

    cpus: float
    gpus: float = 0.0


class PlacementWatch:
    """Which tracked processes Ray has placed yet, by role and index."""

    def __init__(self):
        self._waiting: dict = {}  # readiness ObjectRef -> (role, index)
        self._asks: dict[tuple[str, int], Ask] = {}
        self._placed: set[tuple[str, int]] = set()

    def track(self, role: str, index: int, handle, ask: Ask) -> None:
        """Follow a new actor's placement (replacing whatever had this role and index before)."""
        key = (role, index)
        self._asks[key] = ask
        self._placed.discard(key)
        self._waiting = {ref: k for ref, k in self._waiting.items() if k != key}
        self._waiting[handle.__ray_ready__.remote()] = key

    def refresh(self, timeout: float = 0.0) -> None:
        """Mark what became ready, waiting up to `timeout` for everything still pending."""
        if not self._waiting:
            return
        ready, _ = ray.wait(list(self._waiting), num_returns=len(self._waiting), timeout=timeout)
        for ref in ready:
            self._placed.add(self._waiting.pop(ref))  # a constructor that failed counts as placed: it surfaces elsewhere

    def is_placed(self, role: str, index: int = 0) -> bool:
        """Whether Ray has started this process (as of the last refresh)."""
        return (role, index) in self._placed

    def complete(self) -> bool:
        """Every tracked process is placed."""
        return not self._waiting

    def counts(self) -> str:
        """'rollout 2/3, replay 1/1, learner 1/1': placed of each role, in ROLES order."""
        total = Counter(role for role, _ in self._asks)
        placed = Counter(role for role, _ in self._placed)
        return ", ".join(f"{role} {placed[role]}/{total[role]}" for role in ROLES if total[role])

    def unplaced(self) -> dict[str, int]:
        """How many processes of each role are still pending."""
        return dict(Counter(role for role, _ in self._waiting.values()))

    def asked(self) -> dict[str, float]:
        """What all tracked processes ask together: {'CPU': ..., 'GPU': ...}."""
        return {"CPU": sum(a.cpus for a in self._asks.values()), "GPU": sum(a.gpus for a in self._asks.values())}

    def lacking(self, total: dict) -> dict[str, float]:
        """The resources the run asks beyond the cluster's whole capacity (empty when it fits)."""
        asked = self.asked()
        return {r: asked[r] - float(total.get(r, 0)) for r in asked if asked[r] > float(total.get(r, 0)) + 1e-9}

    def describe(self, free: dict, total: dict) -> str:
        """Placed counts, what the run asks, what the cluster has (and free), and what it lacks, if anything:
        'placed rollout 2/3, replay 1/1, learner 1/1; the run asks 4.25 CPUs, the cluster has 4 CPUs (0 free):
        it lacks 0.25 CPUs'."""
        asked, lacking = self.asked(), self.lacking(total)
        units = ["CPU"] + (["GPU"] if asked["GPU"] or total.get("GPU") else [])
        asks = " and ".join(amount(asked[u], u) for u in units)
        has = " and ".join(f"{amount(float(total.get(u, 0)), u)} ({_number(float(free.get(u, 0)))} free)" for u in units)
        text = f"placed {self.counts()}; the run asks {asks}, the cluster has {has}"
        return text + (": it lacks " + " and ".join(amount(v, u) for u, v in lacking.items()) if lacking else "")

    def waiting_line(self) -> str:
        """The progress-line text while something is pending, from the cluster as it is now: 'waiting for
        resources: ...' when the run asks more than the cluster holds, else 'starting: ...'."""
        total = ray.cluster_resources()
        prefix = "waiting for resources" if self.lacking(total) else "starting"
        return f"{prefix}: {self.describe(ray.available_resources(), total)}"


def layout_line(nodes: dict[tuple[str, int], str]) -> str:
    """'placement: 192.0.2.2: learner 1, replay 1, rollout 1; 127.0.0.2: rollout 1', from {(role, index): node id};
    nodes in the order Ray lists them (the head first)."""
    addresses = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    per_node: dict[str, Counter] = {}
    for (role, _), node in nodes.items():
        per_node.setdefault(node, Counter())[role] += 1
    order = [n for n in addresses if n in per_node] + [n for n in per_node if n not in addresses]
    parts = [f"{addresses.get(n, n[:8])}: " + ", ".join(f"{r} {per_node[n][r]}" for r in ROLES if per_node[n][r])
             for n in order]
    return "placement: " + "; ".join(parts)


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")
