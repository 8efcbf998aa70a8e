"""Prometheus metrics served by the driver: throughput, replay fill, weight lag, losses.

The driver polls its actors and feeds their counters here. Actors can restart and start counting
from zero, so counters are advanced by per-incarnation deltas: a restart never makes a counter go
backwards, and it is itself counted in gcrl_actor_restarts_total.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from common.errors import ConfigError

LAG_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, float("inf"))


class RunMetrics:
    """The metric families of one run, on a registry of their own (no global state)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.env_steps = Counter("gcrl_env_steps", "Environment steps simulated by rollout actors", registry=r)
        self.trajectories = Counter("gcrl_trajectories", "GC-agent episodes generated", registry=r)
        self.updates = Counter("gcrl_learner_updates", "Learner updates by kind", ["kind"], registry=r)
        self.replay_size = Gauge("gcrl_replay_size", "Items held", ["shard", "memory"], registry=r)
        self.replay_inserts = Counter("gcrl_replay_inserts", "GC transitions inserted", ["shard"], registry=r)
        self.replay_samples = Counter("gcrl_replay_samples", "GC transitions sampled", ["shard"], registry=r)
        self.weight_version = Gauge("gcrl_weight_version", "Newest published weights version", registry=r)
        self.weight_lag = Histogram("gcrl_weight_lag", "Versions an actor's weights were behind, per batch",
                                    buckets=LAG_BUCKETS, registry=r)
        self.restarts = Counter("gcrl_actor_restarts", "Actor restarts seen by the driver", ["role"], registry=r)
        self.learner_restarts = Counter("gcrl_learner_restarts", "Learners restarted by the driver after their "
                                        "process died", registry=r)
        self.loss = Gauge("gcrl_loss", "Mean loss of the last training slice", ["kind"], registry=r)
        self.refused = Counter("gcrl_replay_refused_messages", "Malformed messages refused by shards",
                               ["shard"], registry=r)
        self.eval_mse = Gauge("gcrl_eval_reconstruction_mse", "GC-agent reconstruction MSE on the fixed test batch "
                              "(per pixel, [-1, 1] images)", registry=r)
        self.eval_fid = Gauge("gcrl_eval_sample_fid", "FID of S-agent samples against the training set", registry=r)
        self.eval_updates = Gauge("gcrl_eval_updates", "Learner steps at the latest evaluation", registry=r)
        self._seen: dict[tuple[str, int], tuple[str, dict]] = {}  # (role, index) -> (incarnation, counters)
        self._learner: dict[str, int] = {}
        self.env_steps_total = self.trajectories_total = 0  # plain copies for the progress line
        self.gc_fill: dict[str, int] = {}
        self.latest_version = -1
        self.actors_acting = 0  # rollout actors that answered the last poll having acted
        self.replay_sizes: dict[str, dict[str, int]] = {}  # shard -> memory -> items, from the last poll
        self.lag_sum = self.lag_count = 0  # every weight lag observed, and how many
        self._lag_read = (0, 0)  # (lag_sum, lag_count) at the last readings()

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Start the HTTP endpoint (port 0 picks a free one); returns the port."""
        try:
            server, _thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port} cannot be served ({exc.strerror}); "
                              "pick another port, 0 for any free one, or -1 for none") from exc
        return server.server_port

    def _deltas(self, role: str, stats: dict, keys: tuple[str, ...]) -> dict[str, int]:
        """Growth of each counter since the last reading of this actor, across restarts."""
        key = (role, stats["index"])
        incarnation, before = self._seen.get(key, (None, {}))
        if incarnation is not None and incarnation != stats["incarnation"]:
            self.restarts.labels(role=role).inc()
            before = {}
        self._seen[key] = (stats["incarnation"], {k: stats[k] for k in keys})
        return {k: max(0, stats[k] - before.get(k, 0)) for k in keys}

    def record_rollout(self, stats: dict) -> None:
        """Fold one rollout actor's stats() into throughput counters and the lag histogram."""
        delta = self._deltas("rollout", stats, ("env_steps", "trajectories"))
        self.env_steps.inc(delta["env_steps"])
        self.trajectories.inc(delta["trajectories"])
        self.env_steps_total += delta["env_steps"]
        self.trajectories_total += delta["trajectories"]
        for lag in stats["lags"]:
            self.weight_lag.observe(lag)
        self.lag_sum += sum(stats["lags"])
        self.lag_count += len(stats["lags"])

    def record_shard(self, stats: dict) -> None:
        """Fold one replay shard's stats() into sizes and insert/sample counters."""
        delta = self._deltas("replay", stats, ("inserts", "samples", "refused_messages"))
        shard = str(stats["index"])
        self.replay_inserts.labels(shard=shard).inc(delta["inserts"])
        self.replay_samples.labels(shard=shard).inc(delta["samples"])
        self.refused.labels(shard=shard).inc(delta["refused_messages"])
        for memory, size in stats["sizes"].items():
            self.replay_size.labels(shard=shard, memory=memory).set(size)
        self.gc_fill[shard] = stats["sizes"]["gc_transitions"]
        self.replay_sizes[shard] = dict(stats["sizes"])

    def learner_baseline(self, updates: dict[str, int]) -> None:
        """Updates done before this process started (a resumed run), so they are not counted again."""
        self._learner = dict(updates)

    def learner_restarted(self, updates: dict[str, int]) -> None:
        """A new learner took over from a checkpoint: count it, and count its updates from there."""
        self.learner_restarts.inc()
        self._learner = dict(updates)

    def record_learner(self, stats: dict) -> None:
        """Fold the learner's stats() into update counters, loss gauges and the weights version."""
        for kind, total in stats["updates"].items():
            self.updates.labels(kind=kind).inc(max(0, total - self._learner.get(kind, 0)))
            self._learner[kind] = total
        for kind, value in stats["losses"].items():
            self.loss.labels(kind=kind).set(value)
        self.weight_version.set(stats["weight_version"])
        self.latest_version = stats["weight_version"]

    def record_evaluation(self, result: dict, updates: int) -> None:
        """The periodic evaluation's figures (FID only when it was computed)."""
        self.eval_mse.set(result["reconstruction_mse"])
        if result.get("sample_fid") is not None:
            self.eval_fid.set(result["sample_fid"])
        self.eval_updates.set(updates)

    def readings(self) -> dict[str, float | None]:
        """Plain values for the run's TensorBoard curves: items per replay memory (summed over shards), the mean
        weight lag since the last call (None when no batch was acted since), the newest weights version,
        actor restarts of every role and actors acting."""
        totals: dict[str, float | None] = {}
        for sizes in self.replay_sizes.values():
            for memory, size in sizes.items():
                totals[f"replay/{memory}"] = totals.get(f"replay/{memory}", 0) + size
        lag_sum, lag_count = self.lag_sum - self._lag_read[0], self.lag_count - self._lag_read[1]
        self._lag_read = (self.lag_sum, self.lag_count)
        restarts = sum(sample.value for family in self.restarts.collect() for sample in family.samples
                       if sample.name.endswith("_total"))
        return {**totals, "weights/staleness": lag_sum / lag_count if lag_count else None,
                "weights/version": self.latest_version, "ray/actor_restarts": restarts,
                "ray/actors_acting": self.actors_acting}
