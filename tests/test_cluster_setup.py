"""What the cluster files run on a head before any training: the datasets' link, Prometheus, and the check's
derived cluster file. The whole path (`ray up`, `ray submit`, `ray down`) runs in deploy/local-cluster-check.sh.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from common.errors import DataError
from deploy.datasets import prepare
from deploy.local_cluster import check_only_edits, derive, rollout_nodes
from tests.helpers import REPO, free_port, wait_for
from tests.test_deploy_configs import ray_validate
from tests.test_prometheus import prometheus_binary


def test_datasets_are_checked_then_linked_where_launch_finds_them(data_dir, tmp_path):
    link = tmp_path / "checkout" / "data"
    link.parent.mkdir()
    lines = prepare(data_dir, download=False, link=link)
    assert lines[0] == f"mnist: 60000 + 10000 images in {data_dir.resolve() / 'MNIST'}"
    assert lines[1].startswith("fashion-mnist: 60000 + 10000 images")
    assert link.is_symlink() and link.resolve() == data_dir.resolve()
    prepare(data_dir, download=False, link=link)  # again (a second `ray up`): the link is replaced, not refused
    assert link.resolve() == data_dir.resolve()


def test_a_folder_without_the_datasets_stops_setup_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "deploy.datasets", str(tmp_path / "empty")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: no mnist images found in {tmp_path / 'empty' / 'MNIST' / 'raw'}")


def test_a_real_folder_in_the_way_of_the_link_is_left_alone(data_dir, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="already exists and is not a link"):
        prepare(data_dir, download=False, link=tmp_path / "data")
    assert (tmp_path / "data" / "mine.txt").read_text() == "keep"


def onprem() -> dict:
    return yaml.safe_load((REPO / "deploy/cluster-onprem.yaml").read_text())


def test_the_checks_cluster_file_is_the_shipped_one_with_only_its_edit_values_changed():
    derived = derive(onprem(), "192.0.2.2", "127.0.0.1", "127.0.0.2", "root", "/tmp/key", "/data/sets")
    ray_validate(derived)
    assert derived["provider"]["worker_ips"] == ["127.0.0.2"] and derived["auth"]["ssh_user"] == "root"
    assert "python -m deploy.datasets /data/sets" in derived["head_setup_commands"][0]
    for key in set(onprem()) - {"provider", "auth", "head_setup_commands"}:
        assert derived[key] == onprem()[key], key


def test_a_derived_file_that_changes_anything_else_is_refused():
    source = onprem()
    source["worker_start_ray_commands"] = ["ray stop"] + source["worker_start_ray_commands"]
    with pytest.raises(SystemExit, match="differs from the source"):
        check_only_edits(onprem(), source)


def test_rollout_nodes_read_the_drivers_last_placement_line():
    log = ("placement: 192.0.2.2: rollout 2, replay 1, learner 1\nsomething\n"
           "placement: 192.0.2.2: rollout 1, replay 1, learner 1; 127.0.0.2: rollout 1\n")
    assert rollout_nodes(log) == {"192.0.2.2": 1, "127.0.0.2": 1}
    assert rollout_nodes("no placement here") == {}


@pytest.fixture
def head(tmp_path):
    """A stand-in for a head node's Ray: the record `ray start` writes, which `ray stop` removes."""
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    record.write_text("127.0.0.1:6379")
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path), "GCRL_PROMETHEUS_DIR": str(tmp_path / "prometheus"),
           "GCRL_PROMETHEUS_LISTEN": f"127.0.0.1:{free_port()}", "PATH": os.path.dirname(prometheus_binary())
           + os.pathsep + os.environ["PATH"]}
    yield record, env
    group = tmp_path / "prometheus" / "group"
    if group.exists():  # a failed test leaves nothing running
        try:
            os.killpg(int(group.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_prometheus(env: dict) -> int:
    result = subprocess.run(["bash", str(REPO / "deploy/head-prometheus.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(os.path.join(env["GCRL_PROMETHEUS_DIR"], "group")) as handle:
        return int(handle.read())


def ready(listen: str) -> bool:
    with urllib.request.urlopen(f"http://{listen}/-/ready", timeout=2) as response:
        return response.status == 200


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def test_head_prometheus_runs_once_per_head_and_stops_with_ray(head):
    record, env = head
    first = start_prometheus(env)
    wait_for(lambda: ready(env["GCRL_PROMETHEUS_LISTEN"]), 60, what="Prometheus ready")
    second = start_prometheus(env)  # a second `ray up`: the first one is replaced, never doubled
    assert second != first and not group_alive(first)
    wait_for(lambda: ready(env["GCRL_PROMETHEUS_LISTEN"]), 60, what="the new Prometheus ready")
    record.unlink()  # `ray stop` (ray down)
    deadline = time.monotonic() + 30
    while group_alive(second) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not group_alive(second), "Prometheus outlived Ray on its head"
