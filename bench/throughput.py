#!/usr/bin/env python3
"""Steady-state throughput of the single-process reference and of the Ray runtime with 1, 2, 4, ... actors.

    python bench/throughput.py --seconds 30
    python bench/throughput.py --preset tiny --actor-counts 1,2 --skip-single
    python bench/throughput.py --capacity --skip-single      # component costs, predicted scaling, check at 1, 2 actors

RunSummary counts include warm-up (Ray start, the first weights, filling replay up to min_size), so
the rates here are taken between two readings after warm-up: this script drives each runtime's loop
itself (SingleProcessTrainer.act/learn, DistributedRun.learn_slice/poll) and reads the counters at
the start and at the end of a fixed measuring window. It prints figures only; it asserts nothing.

Ray's learner and actors each run torch with one thread per CPU they reserve (one by default), while
this process keeps torch's default (one per core) unless --threads says otherwise; on a busy machine
that default can slow the single-process reference many times over, so compare with --threads 1 too.

--capacity first measures each component alone (rollout actor, replay shard, learner; bench/capacity.py
explains the model), prints the scaling they predict for N actors and S shards with the bottleneck named,
and at the end sets that prediction beside the measured Ray rows (actor counts 1,2 unless given).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from deploy.cli import TrainCommand, parse_train  # noqa: E402
from common.storage.data import GoalSet, load_goals  # noqa: E402
from common.method.presets import PRESETS  # noqa: E402

from bench.capacity import CapacitySettings, measure_components, print_check, print_costs, print_scaling  # noqa: E402

HUGE_UPDATES = 10**12  # the runs stop on the benchmark's clock, never on their update budget
WARMUP_GRACE = 300.0  # seconds past --warmup to wait for the first learner update before measuring anyway


@dataclass
class Rates:
    """One row of the table: what a configuration sustained over its measuring window."""

    runtime: str
    actors: int | None
    env_per_s: float
    updates_per_s: float
    window_s: float
    note: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's own flags; training flags are built from them for parse_train."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=tuple(PRESETS), default="small")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--seconds", type=float, default=60.0, help="measuring window per configuration")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds before the window opens")
    p.add_argument("--max-actors", type=int, help="cap on the default 1, 2, 4, ... actor counts")
    p.add_argument("--actor-counts", help="explicit comma-separated actor counts, e.g. 1,2,4")
    p.add_argument("--num-replay-shards", type=int, default=1)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="single-process device; for Ray, cpu/cuda set --learner-gpus 0/1 (auto: GPU iff one exists)")
    p.add_argument("--threads", type=int, help="torch threads of this process (the single-process run); default: torch's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE",
                   help="training override passed through, e.g. --set replay.samples_per_insert=0.5 to see acting "
                        "scale once the learner no longer bounds it")
    p.add_argument("--skip-single", action="store_true")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--learner-cpus", type=int, default=1, help="CPUs (torch threads) of the Ray learner")
    g = p.add_argument_group("capacity figures (bench/capacity.py)")
    g.add_argument("--capacity", action="store_true",
                   help="measure each component alone, print the predicted scaling table, check it against the Ray rows")
    g.add_argument("--component-seconds", type=float, default=10.0, help="measuring time per component")
    g.add_argument("--table-actors", default="1,2,4,8,16,32,64", help="actor counts of the predicted table")
    g.add_argument("--table-shards", default="1,2,4", help="shard counts of the predicted table")
    return p.parse_args(argv)


def int_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]."""
    return [int(x) for x in text.split(",") if x.strip()]


def actor_counts(args: argparse.Namespace) -> list[int]:
    """The explicit list, else 1,2 for --capacity, else powers of two up to the cores (or --max-actors) and that cap."""
    if args.actor_counts:
        return int_list(args.actor_counts)
    if args.capacity:  # the check of the prediction
        return [1, 2]
    cap = max(1, min(os.cpu_count() or 1, args.max_actors or os.cpu_count() or 1))
    counts, n = [], 1
    while n <= cap:
        counts.append(n)
        n *= 2
    return counts if counts[-1] == cap else counts + [cap]


def train_command(args: argparse.Namespace, runtime: str, actors: int | None = None) -> TrainCommand:
    """A TrainCommand through the same parser as launch.py, so presets and checks are the real ones."""
    flags = ["--runtime", runtime, "--preset", args.preset, "--dataset", args.dataset, "--data-dir", str(args.data_dir),
             "--total-updates", str(HUGE_UPDATES), "--seed", str(args.seed), "--metrics-port", "-1",
             "--num-replay-shards", str(args.num_replay_shards), "--learner-cpus", str(args.learner_cpus)]
    if runtime == "single-process":
        flags += ["--device", args.device]
    elif args.device != "auto":  # the Ray learner's device follows the GPUs it is given
        flags += ["--learner-gpus", "1" if args.device == "cuda" else "0"]
    if actors is not None:
        flags += ["--num-actors", str(actors)]
    for item in args.set:
        flags += ["--set", item]
    return parse_train(flags, "bench")


def measure(step: Callable[[], None], read: Callable[[], tuple[int, int]], warmup: float, seconds: float) -> tuple:
    """Run `step` through warm-up, then rates of read()'s (env steps, updates) over the next `seconds`.

    Warm-up lasts at least `warmup` seconds and until the learner has made an update (replay filled),
    so the window sees only the steady state. Returns (env/s, updates/s, window seconds, note).
    """
    started, note = time.monotonic(), ""
    while time.monotonic() - started < warmup or read()[1] == 0:
        if time.monotonic() - started > warmup + WARMUP_GRACE:
            note = "no update during warm-up"
            break
        step()
    t0, (env0, upd0) = time.monotonic(), read()
    while time.monotonic() - t0 < seconds:
        step()
    t1, (env1, upd1) = time.monotonic(), read()
    window = max(t1 - t0, 1e-9)
    return (env1 - env0) / window, (upd1 - upd0) / window, window, note


def bench_single(args: argparse.Namespace, goals: GoalSet) -> Rates:
    """The reference loop of SingleProcessTrainer.run (learn if the limiter allows, else act), timed."""
    from deploy.single_process import SingleProcessTrainer

    command = train_command(args, "single-process")
    trainer = SingleProcessTrainer(command.config, goals, command.run, command.preset_name)

    def step() -> None:
        if not trainer.learn():
            trainer.act()

    env, upd, window, note = measure(step, lambda: (trainer.counters.env_steps, trainer.learner.counts.steps),
                                     args.warmup, args.seconds)
    return Rates("single-process", None, env, upd, window, note)


def start_ray(counts: list[int]) -> None:
    """One local Ray for every configuration, with CPUs enough for the largest (cores may be oversubscribed)."""
    import ray

    from actors.names import NAMESPACE

    cpus = max(os.cpu_count() or 1, max(counts) + 2)
    # "local": a fresh instance even while another Ray runs here (address=None would join that one)
    ray.init(address="local", num_cpus=cpus, namespace=NAMESPACE, logging_level="WARNING")


def bench_ray(args: argparse.Namespace, goals: GoalSet, actors: int) -> Rates:
    """DistributedRun's driver loop (learn_slice, then poll of the actors), timed; always shut down."""
    import ray

    from deploy.ray_driver import DistributedRun, resolve_placement

    command = train_command(args, "ray", actors)
    run = DistributedRun(command, goals, resolve_placement(command.ray, ray.cluster_resources()))
    steps = 0
    try:
        def step() -> None:
            nonlocal steps
            steps = run.learn_slice()
            run.poll()

        env, upd, window, note = measure(step, lambda: (run.counters.env_steps, steps), args.warmup, args.seconds)
    finally:
        run.finish()
        time.sleep(2.0)  # let Ray release the killed actors' CPUs before the next configuration asks
    return Rates("ray", actors, env, upd, window, note)


def capacity_settings(args: argparse.Namespace, command: TrainCommand) -> CapacitySettings:
    """The capacity section's settings: the Ray run's shards, learner threads and device."""
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return CapacitySettings(seconds=args.component_seconds, table_actors=tuple(int_list(args.table_actors)),
                            table_shards=tuple(int_list(args.table_shards)), num_shards=args.num_replay_shards,
                            learner_threads=args.learner_cpus, learner_device="cuda" if gpu else "cpu",
                            publish_every=command.ray.publish_every, seed=args.seed)


def bench_capacity(args: argparse.Namespace, goals: GoalSet) -> tuple:
    """Component costs and the predicted table, measured before Ray starts so that alone means alone."""
    command = train_command(args, "ray", 1)
    settings = capacity_settings(args, command)
    costs = measure_components(command.config, goals, settings)
    print_costs(costs, command.config, settings)
    print_scaling(costs, settings)
    return costs, settings


def print_machine(args: argparse.Namespace) -> None:
    """What the figures were measured on, printed before any of them."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"GPU: {gpu}, --device {args.device}", flush=True)
    print(f"preset: {args.preset}, dataset: {args.dataset} from {args.data_dir}, window {args.seconds:g}s "
          f"after >= {args.warmup:g}s warm-up, {args.num_replay_shards} replay shard(s)", flush=True)


def ratio(value: float, base: Rates | None, attr: str) -> str:
    """value / the single-process figure, or '-' when there is none to compare with."""
    ref = getattr(base, attr) if base is not None else 0.0
    return f"{value / ref:.2f}" if ref > 0 else "-"


def print_table(rows: list[Rates]) -> None:
    """The table of rates and their ratios to the single-process reference."""
    base = next((r for r in rows if r.runtime == "single-process"), None)
    print(f"\n{'runtime':<16} {'actors':>6} {'env steps/s':>12} {'updates/s':>10} {'env x single':>13} "
          f"{'updates x single':>17} {'window s':>9}")
    for r in rows:
        actors = "-" if r.actors is None else str(r.actors)
        print(f"{r.runtime:<16} {actors:>6} {r.env_per_s:>12.1f} {r.updates_per_s:>10.2f} "
              f"{ratio(r.env_per_s, base, 'env_per_s'):>13} {ratio(r.updates_per_s, base, 'updates_per_s'):>17} "
              f"{r.window_s:>9.1f}{'  (' + r.note + ')' if r.note else ''}", flush=True)


def report(rate: Rates) -> Rates:
    """A line as soon as a configuration is done, so a long benchmark shows progress."""
    who = rate.runtime + (f" x{rate.actors}" if rate.actors else "")
    print(f"measured {who}: {rate.env_per_s:.1f} env steps/s, {rate.updates_per_s:.2f} updates/s "
          f"over {rate.window_s:.1f}s{' (' + rate.note + ')' if rate.note else ''}", flush=True)
    return rate


def main(argv: list[str] | None = None) -> int:
    """Measure each requested configuration in turn, then print the table."""
    args = parse_args(argv)
    if args.threads:  # Ray's learner and actors set their own (one per CPU they reserve)
        torch.set_num_threads(args.threads)
    print_machine(args)
    goals = load_goals(args.dataset, args.data_dir)
    capacity = bench_capacity(args, goals) if args.capacity else None
    rows = [] if args.skip_single else [report(bench_single(args, goals))]
    if not args.skip_ray:
        import ray

        counts = actor_counts(args)
        start_ray(counts)
        try:
            rows += [report(bench_ray(args, goals, n)) for n in counts]
        finally:
            ray.shutdown()
    print_table(rows)
    if capacity is not None:
        print_check(*capacity, [(r.actors, r.env_per_s, r.updates_per_s) for r in rows if r.runtime == "ray"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
