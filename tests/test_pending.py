"""A run that cannot make progress says so: what is placed, what the cluster lacks, and a non-zero exit.

A private Ray of 2 logical CPUs (loopback only) stands in for a cluster the run asks too much of; the run
joins it as it would join one made by `ray up`, so nothing sizes Ray to fit the run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import ray

from actors.names import NAMESPACE
from common.storage.data import load_goals
from deploy.cli import parse_train
from deploy.loop import run_loop
from deploy.progress import LossTracker, Throughput
from deploy.pending import Ask, PlacementWatch
from deploy.ray_driver import DistributedRun, resolve_placement
from deploy.settings import RunOptions
from tests.helpers import REPO


@ray.remote
class Idle:
    """An actor that only exists: its placement is what is watched."""

    def ping(self) -> int:
        return 1


@pytest.fixture(scope="module")
def small_ray():
    ray.init(address="local", num_cpus=2, num_gpus=0, namespace=NAMESPACE, include_dashboard=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


def test_watch_counts_placed_processes_and_names_what_the_cluster_lacks(small_ray):
    fits, too_big = Idle.options(num_cpus=1).remote(), Idle.options(num_cpus=3).remote()
    watch = PlacementWatch()
    watch.track("learner", 0, fits, Ask(1))
    watch.track("rollout", 0, too_big, Ask(3))
    try:
        deadline = time.monotonic() + 60
        while not watch.is_placed("learner") and time.monotonic() < deadline:
            watch.refresh(timeout=0.5)  # the one that fits is placed; the other never is
        assert watch.is_placed("learner") and not watch.is_placed("rollout") and not watch.complete()
        assert watch.counts() == "rollout 0/1, learner 1/1"
        assert watch.lacking(ray.cluster_resources()) == {"CPU": 2.0}
        line = watch.waiting_line()
        assert line.startswith("waiting for resources: placed rollout 0/1, learner 1/1; the run asks 4 CPUs, "
                               "the cluster has 2 CPUs (1 free): it lacks 2 CPUs"), line
    finally:
        ray.kill(fits)
        ray.kill(too_big)


def test_a_run_whose_actors_cannot_be_placed_reports_them_and_why_it_made_no_update(small_ray, data_dir, capsys):
    command = parse_train(["--preset", "tiny", "--address", "auto", "--num-actors", "3", "--metrics-port", "-1",
                           "--time-limit", "12", "--progress-every", "2", "--eval-every", "0"], "test")
    placement = resolve_placement(command.ray, ray.cluster_resources())
    summary = DistributedRun(command, load_goals("mnist", data_dir).subset(256), placement).train()
    out = capsys.readouterr()
    text = out.out + out.err
    assert summary.updates == 0 and summary.stopped_by == "time-limit"
    assert ("waiting for resources: placed rollout 0/3, replay 1/1, learner 1/1; the run asks 4.25 CPUs, "
            "the cluster has 2 CPUs (0.75 free): it lacks 2.25 CPUs") in text, text[-2000:]
    assert summary.stalled.startswith("not every process it needs started: placed rollout 0/3")
    assert "it lacks 2.25 CPUs; lower --num-actors" in summary.stalled


def test_a_run_with_no_learner_update_exits_non_zero_with_one_line_saying_why(data_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "--runtime", "single-process", "--preset", "tiny", "--data-dir",
         str(data_dir), "--num-goals", "256", "--time-limit", "1", "--set", "replay.gc_capacity=20000", "--set",
         "replay.min_size_to_sample=20000", "--checkpoint-dir", str(tmp_path / "run")],  # ~1,300 steps/s here
        capture_output=True, text=True, timeout=300, cwd=REPO)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "done: 0 updates" in result.stdout
    assert len(errors) == 1 and re.match(r"error: no learner update in \d+s \(stopped by time-limit\): replay held "
                                         r"\d+ of the 20000 GC", errors[0]), result.stderr
    assert "of the 20000 GC transitions learning starts at (replay.min_size_to_sample)" in errors[0]


class Stalled:
    """A runtime that never learns, resumed at update 100: the smallest thing run_loop drives."""

    def __init__(self, learns: bool):
        from common.method.presets import tiny

        self.counters, self.losses, self.learns = Throughput(updates=100), LossTracker(), learns
        self.config = tiny()

    def readings(self) -> dict:
        return {}

    def advance(self) -> int:
        self.counters.updates += self.learns
        return self.counters.updates

    def status(self) -> str:
        return ""

    def evaluations(self) -> list[str]:
        return []

    def save(self) -> None:
        return None

    def stall_reason(self) -> str:
        return "nothing placed"

    def finish(self) -> None:
        return None


@pytest.mark.parametrize("learns", [False, True])
def test_the_run_loop_reports_a_stall_only_when_this_run_made_no_update(learns):
    summary = run_loop(Stalled(learns), RunOptions(time_limit=0.2, progress_every=60))
    assert summary.stalled == (None if learns else "nothing placed")
    assert summary.updates > 100 if learns else summary.updates == 100
