"""Helpers for tests that run launch.py as a real process and read its metrics over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_launch(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """launch.py in its own process group, output to `log`."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, stdout=handle,
                            stderr=subprocess.STDOUT, env=full_env, start_new_session=True)


def run_launch(args: list[str], log: Path, timeout: float = 300) -> str:
    """Run launch.py to the end; returns its output, failing with it if the exit status is not 0."""
    process = start_launch(args, log)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process)
        raise AssertionError(f"launch.py did not finish in {timeout}s:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert code == 0, f"launch.py exited {code}:\n{text[-3000:]}"
    return text


def stop_process(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 120) -> int:
    """Send `sig` to the process; kill its whole group if it does not exit in time."""
    process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint as {(name, sorted labels): value}, parsed by prometheus-client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    """One sample's value (0 when absent, as Prometheus would show no series yet)."""
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def wait_for(predicate, timeout: float, every: float = 1.0, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:  # endpoint not up yet
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def drive(run, until, timeout: float, what: str):
    """Learn and poll a DistributedRun driven from the test, slice after slice, until `until()` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.learn_slice()
        run.poll()
        if until():
            return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_log(folder: Path):
    """Every scalar and image of a TensorBoard log folder, as TensorBoard loads them (tensorboard's
    EventAccumulator, which also drops the points a resumed run purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    log.Reload()
    return log
