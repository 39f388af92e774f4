"""Fixtures: the repository root and the device that tests taking the ``device`` fixture
run on (helpers shared by several modules are in tests/helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Where tests that take the `device` fixture run: cpu unless set (benchmarks/gpu_check.py
# sets it to cuda and selects them with `-m device`).
DEVICE_ENV = "RBD_TEST_DEVICE"


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def device():
    """The torch device named by $RBD_TEST_DEVICE (default cpu). Every test that takes it is
    marked `device`, so `RBD_TEST_DEVICE=cuda pytest -m device` runs all of them on a GPU."""
    import torch

    name = os.environ.get(DEVICE_ENV, "cpu")
    try:
        where = torch.device(name)
    except RuntimeError as err:
        pytest.fail(f"{DEVICE_ENV}={name!r} is not a torch device ({err}); use cpu or cuda[:N]")
    if where.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"{DEVICE_ENV}={name!r}, but torch {torch.__version__} sees no CUDA device")
    return where


def pytest_collection_modifyitems(items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
