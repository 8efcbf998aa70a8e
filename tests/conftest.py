"""Shared test options: where the datasets are (../shared/data unless --data-dir or GCRL_DATA_DIR says)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
