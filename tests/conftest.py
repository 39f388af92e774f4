"""Shared helpers: the repository root, and running the `rbd` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
