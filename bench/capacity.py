"""Capacity figures for bench/throughput.py: each component's cost measured alone, and the scaling it predicts.

Why: a measured run says what one machine sustained; these figures say which process will limit a
bigger one, before renting it. Rollout actor, replay shard and learner are each timed here, in this
process and without Ray, on the run's own preset: RolloutWorker.collect on one torch thread (plus the
insert message's encode), ReplayTables.insert of those batches (plus their decode), ReplayTables.sample
for the learner's requests (plus the encode), and Learner.step on the served batches (plus the decode)
with the learner's threads and device.

The model. Every process is one core, busy or idle. The samples-per-insert limiter ties learning to
acting: with E env steps/s (= GC transitions inserted/s) the learner makes L = g * E steps/s, where
g = samples_per_insert / (GC transitions the limiter counts per learner step). So
    E = min(N * actor env steps/s                                   N actors,
            S / (shard s per env step inserted + g * shard s per request)    S shards,
            learner steps/s / g                                     one learner,
            cores / (CPU s of all processes per env step))          only where cores are counted,
the smallest naming the bottleneck. Each actor reloads weights after a batch at most, and at most as
often as the learner publishes (every publish_every steps). Ray's own costs (object transfers, calls,
the driver, the raylet) are left out: the check against a measured Ray run says how much they weigh.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from actors.worker import RolloutWorker
from buffers.tables import ReplaySample
from common.method.config import ExperimentConfig
from common.storage.data import GoalSet
from common.storage.messages import TrajectoryBatch, pack_weights
from learner.builder import Builder
from learner.learning import Learner

MB = 1e6


@dataclass(frozen=True)
class CapacitySettings:
    """What the capacity section measures, and the shape of the table it prints."""

    seconds: float = 10.0  # measuring time per component (rollout, shard inserts + samples, learner)
    table_actors: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    table_shards: tuple[int, ...] = (1, 2, 4)
    num_shards: int = 1  # shards of the measured run: each holds 1/S of replay, as in the run
    learner_threads: int = 1  # torch threads of the learner (the Ray learner: one per CPU it reserves)
    learner_device: str = "cpu"
    publish_every: int = 20  # learner steps between weight versions
    kept_batches: int = 32  # insert messages kept to feed the shard
    kept_samples: int = 32  # sample messages kept to feed the learner
    seed: int = 0


@dataclass(frozen=True)
class ComponentCosts:
    """Seconds of one core per unit of work, each measured alone, and the bytes each unit moves."""

    episodes_per_batch: int  # B goals rolled out together
    env_steps_per_batch: int  # B * H, also the GC transitions one insert adds
    actor_batch_s: float  # RolloutWorker.collect + TrajectoryBatch.to_message, one thread
    insert_s: float  # TrajectoryBatch.from_message + ReplayTables.insert of one batch
    sample_s: float  # ReplayTables.sample + ReplaySample.to_message of one learner request
    decode_s: float  # ReplaySample.from_message on the learner
    step_s: float  # Learner.step
    weight_load_s: float  # RolloutWorker.load_weights of one weights message
    weight_publish_s: float  # Learner.weights + pack_weights
    insert_bytes: float  # one TrajectoryBatch message
    sample_bytes: float  # one ReplaySample message (mean over the request pattern)
    weights_bytes: float
    steps_per_env_step: float  # g: learner steps the limiter allows per GC transition inserted
    publish_every: int
    learner_threads: int

    def learner_step_s(self) -> float:
        """One learner step as the Ray learner pays it: decode, step, and its share of a publish."""
        return self.decode_s + self.step_s + self.weight_publish_s / self.publish_every

    def reload_share(self, actors: int) -> float:
        """Share of an actor's batches followed by a weight reload: publishes per batch of one actor, at most 1."""
        return min(1.0, actors * self.steps_per_env_step * self.env_steps_per_batch / self.publish_every)

    def actor_env_step_s(self, actors: int) -> float:
        """Actor CPU seconds per env step, its reloads included."""
        return (self.actor_batch_s + self.reload_share(actors) * self.weight_load_s) / self.env_steps_per_batch

    def shard_env_step_s(self) -> float:
        """Shard CPU seconds per env step inserted: the insert and the g requests it pays for."""
        return self.insert_s / self.env_steps_per_batch + self.steps_per_env_step * self.sample_s


@dataclass(frozen=True)
class Prediction:
    """One row of the scaling table: the sustained rates and what limits them."""

    actors: int
    shards: int
    env_per_s: float
    learner_per_s: float
    limits: dict[str, float]  # env steps/s each resource alone would allow
    bottleneck: str
    bytes_per_s: float  # inserts, samples and weight fetches over the network


def predict(costs: ComponentCosts, actors: int, shards: int, cores: int | None = None) -> Prediction:
    """The model of the module docstring; `cores` caps all processes together (None: one core each)."""
    g = costs.steps_per_env_step
    limits = {"actors": actors / costs.actor_env_step_s(actors),
              "shards": shards / costs.shard_env_step_s(),
              "learner": 1.0 / (g * costs.learner_step_s())}
    if cores:  # CPU seconds of every process per env step, against the cores they share
        learner_cpu = g * costs.learner_step_s() * costs.learner_threads
        limits["cores"] = cores / (costs.actor_env_step_s(actors) + costs.shard_env_step_s() + learner_cpu)
    bottleneck = min(limits, key=limits.get)
    env = limits[bottleneck]
    per_batch = costs.insert_bytes + costs.reload_share(actors) * costs.weights_bytes  # the insert, the reloads
    moved = env / costs.env_steps_per_batch * per_batch + g * env * costs.sample_bytes
    return Prediction(actors, shards, env, g * env, limits, bottleneck, moved)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` for a measurement, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(call: Callable[[], object], seconds: float, min_calls: int = 3) -> float:
    """Mean seconds per call over at least `seconds` and `min_calls` calls."""
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        call()
        calls += 1
    return (time.perf_counter() - start) / calls


def limiter_count_per_step(learner: Learner) -> float:
    """GC transitions the limiter counts per learner step, averaged over the updates' schedule."""
    cfg = learner.learning
    cycle = math.lcm(cfg.q_every, cfg.selection_every, cfg.proposal_every)
    return sum(max(learner.request_for(k).gc_transitions, 1) for k in range(cycle)) / cycle


def build_learner(config: ExperimentConfig, goals: GoalSet, settings: CapacitySettings) -> Learner:
    """The learner the Ray run builds, on its device, from the same seeded weights."""
    builder = Builder.for_goals(config, goals)
    return builder.make_learner(builder.make_agent(settings.seed), goals.images, builder.start_state(goals),
                                torch.device(settings.learner_device))


def measure_rollout(config: ExperimentConfig, goals: GoalSet,
                    settings: CapacitySettings) -> tuple[dict, list[bytes], RolloutWorker]:
    """One actor core: collect + encode for `seconds`; returns cost fields, kept messages and the worker."""
    with torch_threads(1):
        builder = Builder.for_goals(config, goals)
        worker = builder.make_rollout_worker(builder.make_agent(settings.seed), goals.images, builder.start_state(goals),
                                             torch.device("cpu"), settings.seed + 1)
        worker.collect()  # warm-up: first-call allocations and kernel choices
        messages = []

        def one() -> None:
            payload = worker.collect().to_message()  # states [B, H+1, C, H, W] float32 inside
            messages.append(payload)
            del messages[:-settings.kept_batches]  # a rolling window of the newest

        batch_s = timed(one, settings.seconds)
    b = config.acting.goals_per_rollout
    fields = {"episodes_per_batch": b, "env_steps_per_batch": b * config.mdp.horizon, "actor_batch_s": batch_s,
              "insert_bytes": sum(map(len, messages)) / len(messages)}
    return fields, messages, worker


def measure_shard(config: ExperimentConfig, goals: GoalSet, messages: list[bytes], learner: Learner,
                  settings: CapacitySettings) -> tuple[dict, list[bytes]]:
    """One shard: inserts for half the time, then the learner's requests (inserting untimed when refused)."""
    builder = Builder.for_goals(config, goals)
    spec, tables = builder.trajectory_spec(), builder.make_replay_tables(settings.seed + 2, settings.num_shards)
    feed = itertools.cycle(messages)
    insert = lambda: tables.insert(TrajectoryBatch.from_message(next(feed), spec))  # noqa: E731
    insert_s = timed(insert, settings.seconds / 2)
    busy, count, payloads = 0.0, 0, []
    deadline = time.perf_counter() + settings.seconds / 2
    while count < 3 or time.perf_counter() < deadline:
        request = learner.request_for(count)
        if not tables.can_sample(request):
            insert()  # the limiter wants more data first: not part of a sample's cost
            continue
        start = time.perf_counter()
        payload = tables.sample(request).to_message()
        busy += time.perf_counter() - start
        count += 1
        if len(payloads) < settings.kept_samples:
            payloads.append(payload)
    fields = {"insert_s": insert_s, "sample_s": busy / count, "sample_bytes": sum(map(len, payloads)) / len(payloads)}
    return fields, payloads


def measure_learner(learner: Learner, payloads: list[bytes], settings: CapacitySettings) -> dict:
    """Learner.step on served batches with the learner's threads; decode and step timed apart."""
    with torch_threads(settings.learner_threads):
        learner.step(ReplaySample.from_message(payloads[0]))  # warm-up
        decode = step = 0.0
        count = 0
        while count < 3 or decode + step < settings.seconds:
            start = time.perf_counter()
            sample = ReplaySample.from_message(payloads[count % len(payloads)])
            middle = time.perf_counter()
            learner.step(sample)  # returns float losses, so a GPU step has finished here
            step += time.perf_counter() - middle
            decode += middle - start
            count += 1
    return {"decode_s": decode / count, "step_s": step / count}


def measure_weights(learner: Learner, worker: RolloutWorker, settings: CapacitySettings) -> dict:
    """A publish on the learner (weights to numpy, pack) and a reload on an actor (one thread)."""
    quick = max(0.2, settings.seconds / 10)
    with torch_threads(settings.learner_threads):
        publish_s = timed(lambda: pack_weights(learner.weights(), 1), quick)
    payload = pack_weights(learner.weights(), 1)
    with torch_threads(1):
        load_s = timed(lambda: worker.load_weights(payload), quick)
    return {"weight_publish_s": publish_s, "weight_load_s": load_s, "weights_bytes": float(len(payload))}


def measure_components(config: ExperimentConfig, goals: GoalSet, settings: CapacitySettings) -> ComponentCosts:
    """Every component alone, in turn (rollout, shard, learner, weights), then the pacing ratio."""
    learner = build_learner(config, goals, settings)
    rollout, messages, worker = measure_rollout(config, goals, settings)
    shard, payloads = measure_shard(config, goals, messages, learner, settings)
    learning = measure_learner(learner, payloads, settings)
    weights = measure_weights(learner, worker, settings)
    g = config.replay.samples_per_insert / limiter_count_per_step(learner)
    return ComponentCosts(**rollout, **shard, **learning, **weights, steps_per_env_step=g,
                          publish_every=settings.publish_every, learner_threads=settings.learner_threads)


def print_costs(costs: ComponentCosts, config: ExperimentConfig, settings: CapacitySettings) -> None:
    """Each component's rate alone, the bytes it moves, and the pacing that links them."""
    c, ms, b = costs, 1e3, costs.episodes_per_batch
    print(f"\ncomponent costs, each measured alone in this process ({settings.seconds:g}s each, no Ray):")
    print(f"  rollout actor, 1 thread: {c.env_steps_per_batch / c.actor_batch_s:.1f} env steps/s per core, "
          f"{b / c.actor_batch_s:.1f} trajectories/s ({c.actor_batch_s * ms:.2f} ms per batch of {b} episodes, "
          "encode included)")
    print(f"  insert message: {c.insert_bytes:,.0f} bytes per batch, {c.insert_bytes / b:,.0f} per episode")
    print(f"  replay shard inserts: {1 / c.insert_s:.1f} batches/s = {b / c.insert_s:.1f} episodes/s "
          f"= {c.env_steps_per_batch / c.insert_s:.1f} GC transitions/s (decode included)")
    print(f"  replay shard samples: {1 / (c.sample_s + c.decode_s):.1f} requests/s with encode and decode "
          f"({c.sample_s * ms:.2f} ms on the shard, {c.decode_s * ms:.2f} ms decode on the learner), "
          f"{c.sample_bytes:,.0f} bytes per learner step")
    print(f"  learner, {settings.learner_threads} thread(s) on {settings.learner_device}: {1 / c.learner_step_s():.1f} "
          f"steps/s ({c.step_s * ms:.2f} ms step + {c.decode_s * ms:.2f} ms decode + publish "
          f"{c.weight_publish_s * ms:.2f} ms / {c.publish_every})")
    print(f"  weights: {c.weights_bytes:,.0f} bytes, {c.weight_load_s * ms:.2f} ms to load on an actor")
    print(f"  pacing: samples_per_insert {config.replay.samples_per_insert:g} GC transitions per transition "
          f"inserted, {config.replay.samples_per_insert / c.steps_per_env_step:g} counted per learner step -> "
          f"learner steps/s = {c.steps_per_env_step:.4g} x env steps/s at most", flush=True)


def print_scaling(costs: ComponentCosts, settings: CapacitySettings, cores: int | None = None) -> None:
    """The predicted table for every actor and shard count, with each resource's limit and the bottleneck."""
    where = f"{cores} cores shared by all" if cores else "one core per process"
    print(f"\npredicted scaling ({where}; limits in env steps/s):")
    print(f"{'actors':>6} {'shards':>6} {'env steps/s':>12} {'learner st/s':>12} {'MB/s':>8} "
          f"{'by actors':>10} {'by shards':>10} {'by learner':>10}  bottleneck")
    for shards in settings.table_shards:
        for actors in settings.table_actors:
            p = predict(costs, actors, shards, cores)
            print(f"{actors:>6} {shards:>6} {p.env_per_s:>12.1f} {p.learner_per_s:>12.2f} {p.bytes_per_s / MB:>8.2f} "
                  f"{p.limits['actors']:>10.1f} {p.limits['shards']:>10.1f} {p.limits['learner']:>10.1f}  "
                  f"{p.bottleneck}", flush=True)


def error_pct(predicted: float, measured: float) -> str:
    """(predicted - measured) / measured in %, or '-' with nothing measured."""
    return f"{100 * (predicted - measured) / measured:+.0f}%" if measured > 0 else "-"


def print_check(costs: ComponentCosts, settings: CapacitySettings, measured: list[tuple[int, float, float]]) -> None:
    """Predicted vs measured Ray rows (actors, env steps/s, learner steps/s), on this machine's cores."""
    cores = os.cpu_count() or 1
    if not measured:
        print("\ncheck: no measured Ray rows to compare with (--skip-ray)")
        return
    print(f"\ncheck: prediction vs the measured Ray runs ({settings.num_shards} shard(s); {cores} cores here "
          f"shared by actors, shards, learner, driver and Ray, so the cores limit applies)")
    print(f"{'actors':>6} {'env pred':>10} {'env meas':>10} {'env err':>8} {'learn pred':>10} {'learn meas':>10} "
          f"{'learn err':>9}  bottleneck (one core each: env pred, learn pred)")
    for actors, env, learn in measured:
        p, free = predict(costs, actors, settings.num_shards, cores), predict(costs, actors, settings.num_shards)
        print(f"{actors:>6} {p.env_per_s:>10.1f} {env:>10.1f} {error_pct(p.env_per_s, env):>8} "
              f"{p.learner_per_s:>10.2f} {learn:>10.2f} {error_pct(p.learner_per_s, learn):>9}  "
              f"{p.bottleneck} ({free.bottleneck}: {free.env_per_s:.1f}, {free.learner_per_s:.2f})", flush=True)
