"""Shared helpers: the repository root, running the `rbd` CLI in a subprocess, and the
device that tests taking the ``device`` fixture run on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where tests that take the `device` fixture run: cpu unless set (benchmarks/gpu_check.py
# sets it to cuda and selects them with `-m device`).
DEVICE_ENV = "RBD_TEST_DEVICE"


def run_rbd(*args, cwd=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """`python -m rbd ARGS` with this interpreter; returns the completed process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "rbd", *map(str, args)],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rbd {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


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
