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
def test_cluster_files_install_into_one_environment_that_ray_submits_python_finds(name):
    config = yaml.safe_load((REPO / name).read_text())
    setup = config["setup_commands"]
    assert not any("--user" in c for c in setup), "pip refuses --user in a virtual environment and under PEP 668"
    assert "python3 -m venv --system-site-packages" in setup[0] and "GCRL_VENV" in setup[0]
    assert "bin/activate" in setup[1] and ">> ~/.bashrc" in setup[1], "login shells must find its python and ray"
    assert setup[2].startswith("python -m pip install") and "gcrl[eval]" in setup[2]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_node_uses_the_heads_ray_token_and_prometheus_starts_through_its_script(name):
    config = yaml.safe_load((REPO / name).read_text())
    assert config["cluster_synced_files"] == ["~/.ray/auth_token"]
    assert any("ray get-auth-token --generate" in c for c in config["head_setup_commands"])
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert config["head_start_ray_commands"][-1] == "bash ~/gcrl/deploy/head-prometheus.sh"
    assert not any("pkill" in c or "nohup prometheus" in c for c in config["head_start_ray_commands"])
    assert any("python -m deploy.datasets" in c for c in config["head_setup_commands"])


def test_onprem_cluster_scales_on_demand_with_autoscaler_v1_and_can_share_a_host():
    config = yaml.safe_load((REPO / "deploy/cluster-onprem.yaml").read_text())
    prepared = ray_validate(config)
    assert prepared["available_node_types"]["local.cluster.node"]["min_workers"] == 0  # Ray's default: every host
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "RAY_enable_autoscaler_v2=0" in head_start  # v2 starts every listed host at `ray up` (ray#57153)
    workers = " ".join(config["worker_start_ray_commands"])
    assert "ray stop" not in workers, "a worker's `ray stop` would end every Ray on its host, a head sharing it too"
    for fixed in ("--metrics-export-port", "--object-manager-port", "--min-worker-port", "--port="):
        assert fixed not in workers
    assert "--node-ip-address=$(echo $SSH_CONNECTION | cut -d' ' -f3)" in workers
    assert "/srv/gcrl-data" in config["head_setup_commands"][0], "the check substitutes this folder"


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


def test_prometheus_config_scrapes_the_driver_and_rays_discovery_file(tmp_path):
    config = yaml.safe_load((REPO / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gcrl"]["static_configs"][0]["targets"] == ["localhost:8000"]
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package ships it; .ci/run installs that package
        # promtool also opens the discovery file, a link Ray points at its newest session (which another run
        # may have removed); the syntax is checked on a copy naming a file of this test's own
        discovery = tmp_path / "discovery.json"
        discovery.write_text("[]")
        text = (REPO / "deploy/prometheus.yml").read_text()
        copy = tmp_path / "prometheus.yml"
        copy.write_text(text.replace("/tmp/ray/prom_metrics_service_discovery.json", str(discovery)))
        result = subprocess.run([promtool, "check", "config", str(copy)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
