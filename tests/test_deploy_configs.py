"""The cluster files pass Ray's own cluster-config validation; the dashboard and scrape config fit the metrics."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from deploy.metrics import RunMetrics
from tests.helpers import REPO

CLUSTER_FILES = ["deploy/cluster.yaml", "deploy/cluster-onprem.yaml"]


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before using it: fill defaults, then check against Ray's schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_passes_rays_validation(name):
    config = yaml.safe_load((REPO / name).read_text())
    ray_validate(config)
    assert "." in config["file_mounts"].values(), "the repository must travel to every node"
    assert any("pip install" in c and "gcrl" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_a_broken_copy_fails_rays_validation(name):
    config = yaml.safe_load((REPO / name).read_text())
    config["setup_commandz"] = config.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(config)


def test_aws_cluster_has_a_gpu_learner_node_and_scalable_cpu_workers():
    nodes = yaml.safe_load((REPO / "deploy/cluster.yaml").read_text())["available_node_types"]
    assert nodes["gpu_learner"]["min_workers"] >= 1 and nodes["gpu_learner"]["node_config"]["InstanceType"].startswith("g")
    assert nodes["cpu_actors"]["max_workers"] > nodes["cpu_actors"]["min_workers"] >= 1


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "deploy/grafana-dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_dashboard_queries_use_only_metrics_the_driver_exports():
    exported = {m.name for m in RunMetrics().registry.collect()}
    used = {re.sub(r"_(total|bucket|count|sum)$", "", n) for q in dashboard_queries()
            for n in re.findall(r"\bgcrl_[a-z_]+", q)}
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in json.loads((REPO / "deploy/grafana-dashboard.json").read_text())["panels"])
    for needed in ("Environment steps", "Trajectories", "updates", "Replay fill", "Samples per insert",
                   "Weight lag", "Losses"):
        assert needed in titles


def test_prometheus_config_scrapes_the_driver_and_rays_discovery_file():
    config = yaml.safe_load((REPO / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gcrl"]["static_configs"][0]["targets"] == ["localhost:8000"]
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package ships it; .ci/run installs that package
        result = subprocess.run([promtool, "check", "config", str(REPO / "deploy/prometheus.yml")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
