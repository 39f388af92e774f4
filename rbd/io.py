"""Atomic file writes: a reader (or a killed job) never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
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
    _atomic_write(path, lambda h: h.write(text.encode()))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(path: Path, obj) -> None:
    _atomic_write(path, lambda h: torch.save(obj, h))


def load_torch(path: Path):
    """Checkpoints hold tensors, numbers and strings only, so the safe loader suffices."""
    return torch.load(path, map_location="cpu", weights_only=True)
