"""Shared test options: where the datasets are (../shared/data unless --data-dir or GCRL_DATA_DIR says)."""

from __future__ import annotations

import os
from pathlib import Path

# Every Ray these tests start (in this process or in launch.py children) binds to 127.0.0.1 only;
# Ray reads this before its first import, so it is set here, before any test module imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--data-dir", default=os.environ.get("GCRL_DATA_DIR", str(REPO.parent / "shared" / "data")),
                     help="folder with MNIST/ and FashionMNIST/ in torchvision's layout")


@pytest.fixture(scope="session")
def data_dir(request) -> Path:
    """The datasets folder; a missing one fails the test loudly rather than skipping it."""
    path = Path(request.config.getoption("--data-dir"))
    if not (path / "MNIST" / "raw").is_dir():
        pytest.fail(f"no MNIST under {path}; pass --data-dir or set GCRL_DATA_DIR")
    return path


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray for one test module (6 logical CPUs, loopback only), shut down after it."""
    import ray

    from actors.names import NAMESPACE

    ray.init(address="local", num_cpus=6, namespace=NAMESPACE, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
