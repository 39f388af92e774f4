"""Atomic file writes: a reader (or a killed job) never sees half a file."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from rbd.spec.errors import RunDirectoryError

LOCK_FILE = ".rbd-lock"
log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename it over `path`.

    mkstemp creates the file 0600; it gets the mode any new file of this process would
    (0666 less the umask), so collaborators on shared storage can read the outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda h: h.write(text.encode()))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def run_lock(directory: Path):
    """Hold the run directory's lock for the block: a second process (a SLURM retry that
    overlaps a job still running, a user) fails at once naming the holder.

    The lock is an flock on ``<dir>/.rbd-lock``, which the kernel drops when its holder
    dies, so a lock left by a killed job is taken over (with a log line naming it)."""
    path = Path(directory) / LOCK_FILE
    try:
        handle = open(path, "a+")  # noqa: SIM115 (held for the whole block)
    except OSError as err:
        # Found now, before any compute, instead of at the first checkpoint.
        raise RunDirectoryError(
            f"cannot write to the run directory {directory} ({err.strerror}); "
            f"choose a writable --out"
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirectoryError(
                f"{directory} is in use by {holder}; wait for it to end, or train into "
                f"another --out"
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            log.info("took over the lock of %s in %s (no longer running)", previous, directory)
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        handle.flush()
        yield
        handle.seek(0)
        handle.truncate()
    finally:
        handle.close()
