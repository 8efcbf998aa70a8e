"""A real Prometheus (Debian's package; .ci/run installs it) scrapes a live local run, on loopback only.

The environment-steps rate read back through Prometheus's HTTP query API must be positive, and every
query of the Grafana dashboard must evaluate to data.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.helpers import REPO, free_port, start_launch, stop_process, wait_for
from tests.test_deploy_configs import dashboard_queries

pytestmark = pytest.mark.slow
OPTIONAL_METRICS = ("gcrl_actor_restarts", "gcrl_eval_")  # no restart and no evaluation happen in this run


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing: install Debian's package (apt-get install prometheus); "
                    ".ci/run and the README's test command do")
    return binary


def write_config(path, metrics_port: int) -> None:
    """deploy/prometheus.yml pointed at this run on 127.0.0.1, scraping every second."""
    config = yaml.safe_load((REPO / "deploy/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "gcrl"]
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
    path.write_text(yaml.safe_dump(config))


def query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def positive(port: int, expr: str) -> float | None:
    result = query(port, expr)
    value = float(result[0]["value"][1]) if result else 0.0
    return value if value > 0 else None


def test_prometheus_reads_a_positive_env_step_rate_from_a_live_run(data_dir, tmp_path):
    binary = prometheus_binary()
    metrics_port, prometheus_port = free_port(), free_port()
    write_config(tmp_path / "prometheus.yml", metrics_port)
    run = start_launch(["--preset", "tiny", "--data-dir", str(data_dir), "--num-goals", "512", "--num-actors", "2",
                        "--metrics-port", str(metrics_port), "--total-updates", "1000000"], tmp_path / "run.txt")
    prometheus = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.txt", "w"))
    try:
        rate = wait_for(lambda: positive(prometheus_port, "rate(gcrl_env_steps_total[15s])"), 180,
                        what="a positive env-step rate in Prometheus")
        assert rate > 0
        for expr in dashboard_queries():
            if not any(name in expr for name in OPTIONAL_METRICS):
                wait_for(lambda: query(prometheus_port, expr), 60, what=f"data for dashboard query {expr}")
    finally:
        stop_process(prometheus, signal.SIGTERM, timeout=30)
        assert stop_process(run, signal.SIGTERM) == 0, (tmp_path / "run.txt").read_text()[-3000:]
