"""Checkpoints and finished records in the run directory: written when due, read back
to resume, and refused when they hold a run with other settings."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rbd.spec import CHECKPOINT, RUN_JSON, RunDirectoryError, RunSpec, TrainConfig
from rbd.spec.io import atomic_write
from rbd.train.progress import Progress, Setup

if TYPE_CHECKING:
    from rbd.optim.distributed import Workers

log = logging.getLogger(__name__)


# What a checkpoint holds and how it is laid out: 2 since its epoch sums are
# `epoch_totals` and it names its format; a checkpoint without the format (1) is refused.
CHECKPOINT_FORMAT = 2


def save_torch(path: Path, obj) -> None:
    atomic_write(path, lambda h: torch.save(obj, h))


def load_torch(path: Path):
    """Checkpoints hold tensors, numbers and strings only, so the safe loader suffices."""
    return torch.load(path, map_location="cpu", weights_only=True)


def finished_record(cfg: TrainConfig, out: Path) -> dict:
    """The record of a run that has ended, asked for again with the same settings."""
    record = _read_record(out / RUN_JSON)
    _check_same_run(cfg, record.get("config", {}), out / RUN_JSON)
    log.info("%s already finished; nothing to do", out)
    return record


def resume(setup: Setup) -> Progress:
    """The progress saved in checkpoint.pt, with the model and optimisers loaded from it;
    the start of the run when there is none."""
    path = setup.out / CHECKPOINT
    ckpt = _read_checkpoint(path)
    if ckpt is None:
        return Progress.start(setup.cfg.seed, setup.device, setup.rank)
    _check_same_run(setup.cfg, ckpt.get("spec", {}), path)
    if ckpt.get("format", 1) != CHECKPOINT_FORMAT:
        raise RunDirectoryError(
            f"{path} is in checkpoint format {ckpt.get('format', 1)}, written by another "
            f"version of rbd; this one reads format {CHECKPOINT_FORMAT}: finish the run with "
            "the rbd that started it, or delete the checkpoint to train it from the start"
        )
    setup.model.load_state_dict(ckpt["model"])
    for opt, state in zip(setup.optimizers, ckpt["optimizers"], strict=True):
        opt.load_state_dict(state)
    progress = Progress.from_checkpoint(ckpt, setup.device)
    if setup.workers is not None:
        _resume_worker(progress, ckpt, setup.rank)
    log.info("resumed %s at epoch %d, batch %d", setup.out, progress.epoch + 1, progress.next_batch)
    return progress


def _resume_worker(progress: Progress, ckpt: dict, rank: int) -> None:
    """A distributed worker takes back its own augmentation stream and epoch sums."""
    progress.aug_gen.set_state(ckpt["aug_states"][rank].to(progress.aug_gen.get_state().device))
    loss_sum, correct, seen = ckpt["worker_acc"][rank].tolist()
    totals = progress.totals
    totals.loss, totals.correct, totals.seen = loss_sum, int(correct), int(seen)
    progress.checkpoint_steps = ckpt["checkpoint_steps"]


def _save_checkpoint(setup: Setup, progress: Progress) -> None:
    """Write checkpoint.pt. Distributed: every worker must call it (its own streams and sums
    are gathered); worker 0 writes."""
    gathered = {}
    if setup.workers is not None:
        gathered = _worker_states(setup.workers, progress)
        if not setup.workers.is_main:
            return
    save_torch(
        setup.out / CHECKPOINT,
        {
            **gathered,
            "format": CHECKPOINT_FORMAT,
            "spec": dataclasses.asdict(setup.cfg.spec),
            "model": setup.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in setup.optimizers],
            **progress.to_checkpoint(),
        },
    )


def _worker_states(workers: Workers, progress: Progress) -> dict:
    """Every worker's augmentation stream and epoch sums, gathered, and the step count."""
    totals = progress.totals
    sums = [totals.loss, totals.correct, totals.seen]
    return {
        # One tensor per worker, each its own storage: set_state ignores a view's storage offset.
        "aug_states": [s.clone() for s in workers.all_gather(progress.aug_gen.get_state()).cpu()],
        "worker_acc": [s.clone() for s in workers.all_gather(torch.tensor(sums).double())],
        "checkpoint_steps": progress.checkpoint_steps,
    }


class Checkpoints:
    """When to write checkpoint.pt within an epoch: every `checkpoint_minutes` by this
    process's clock; distributed, every `progress.checkpoint_steps` minibatches, a count all
    workers share (the clocks of separate processes would disagree)."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.every_s = setup.cfg.checkpoint_minutes * 60.0
        self.last = time.monotonic()

    def due(self, progress: Progress) -> bool:
        if self.setup.workers is None:
            return time.monotonic() - self.last > self.every_s
        steps = progress.checkpoint_steps
        return bool(steps) and progress.next_batch % steps == 0

    def save(self, progress: Progress) -> None:
        _save_checkpoint(self.setup, progress)
        self.last = time.monotonic()

    def set_steps(self, progress: Progress) -> None:
        """Distributed: the minibatches per interval at the pace of the epoch just ended."""
        seconds = progress.totals.seconds
        progress.checkpoint_steps = max(
            1, int(self.every_s * self.setup.num_batches / max(seconds, 1e-9))
        )


def _read_record(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunDirectoryError(
            f"{path} cannot be read ({type(err).__name__}: {err}); delete the run directory "
            f"or rerun with --overwrite"
        ) from None


def _check_same_run(cfg: TrainConfig, saved: dict, where: Path) -> None:
    """Refuse to resume or reuse a run directory whose run had other settings."""
    defaults = {f.name: f.default for f in fields(RunSpec)}
    if saved.get("method", "sgd") != "sgd":
        # A run recorded before the bases' version was drew version 1 bases.
        defaults["bases_version"] = 1
    wanted = dataclasses.asdict(cfg.spec)
    differ = [
        f"{name} {saved.get(name, defaults[name])!r} there, {value!r} asked"
        for name, value in wanted.items()
        if saved.get(name, defaults[name]) != value
    ]
    if saved and differ:
        raise RunDirectoryError(
            f"{where.parent} holds a run with other settings ({'; '.join(differ)}); "
            f"use another --out, or --overwrite to replace it"
        )


def _read_checkpoint(path: Path) -> dict | None:
    """The checkpoint, or None when there is none or it cannot be read: an unreadable one
    (a truncated write, a full disk) is moved aside as checkpoint.pt.bad-N, and the run
    starts again from scratch instead of failing the same way on every retry."""
    if not path.exists():
        return None
    try:
        return load_torch(path)
    except Exception as err:  # torch raises several types for a damaged file
        n = 1
        while path.with_name(f"{path.name}.bad-{n}").exists():
            n += 1
        aside = path.with_name(f"{path.name}.bad-{n}")
        path.replace(aside)
        log.warning(
            "%s cannot be read (%s: %s); moved it to %s and starting the run from scratch",
            path,
            type(err).__name__,
            err,
            aside.name,
        )
        return None
