"""Support for the Snakemake workflow: the package its jobs import, the logs shown on failure."""

from __future__ import annotations

import os
from pathlib import Path

FAILURE_MARKERS = ("Traceback (most recent call last)", "Error:", "error:")


def failed_job_logs(log_dir: str | Path = "logs", since: float = 0.0) -> list[Path]:
    """Job logs written after `since` (a time.time() value) that record an error, newest first."""
    root = Path(log_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*.log"):
        stat = path.stat()
        if stat.st_mtime < since:
            continue
        text = path.read_text(errors="replace")
        if any(marker in text for marker in FAILURE_MARKERS):
            found.append((stat.st_mtime, path))
    return [path for _, path in sorted(found, reverse=True)]


def import_package_from(basedir: str | Path) -> None:
    """Make jobs started from now on import the rbd package in `basedir` (the workflow's
    checkout), ahead of any other installed copy."""
    current = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(basedir), current]))
