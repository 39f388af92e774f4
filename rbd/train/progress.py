"""A run in memory: what it trains with, fixed once built (Setup), and how far it has
come (Progress, with the current epoch's totals) -- what a checkpoint holds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rbd.spec import TrainConfig
from rbd.train.data import Augmentation, Splits
from rbd.train.models import count_params
from rbd.train.settings import Phase

if TYPE_CHECKING:
    from rbd.optim.distributed import Workers


class EpochStats:
    """Running mean, std, min and max of per-step optimiser statistics over one epoch."""

    def __init__(self, state: dict | None = None):
        self.state = state if state is not None else {}

    def add(self, stats: dict[str, float]) -> None:
        for name, value in stats.items():
            if value is None or not math.isfinite(value):
                continue
            n, total, squares, low, high = self.state.get(name, (0, 0.0, 0.0, math.inf, -math.inf))
            self.state[name] = (
                n + 1,
                total + value,
                squares + value * value,
                min(low, value),
                max(high, value),
            )

    def summary(self, names) -> dict[str, float]:
        row = {}
        for name in names:
            n, total, squares, low, high = self.state.get(name, (0, 0.0, 0.0, math.nan, math.nan))
            mean = total / n if n else math.nan
            var = max(squares / n - mean * mean, 0.0) if n else math.nan
            row |= {
                f"{name}_mean": mean,
                f"{name}_std": math.sqrt(var),
                f"{name}_min": low,
                f"{name}_max": high,
            }
        return row


SUMMARISED_STATS = ("grad_corr", "grad_corr_tensors", "coord_mean", "coord_std")


@dataclass(frozen=True)
class Setup:
    """What a run trains with, fixed once built: its settings, data, model, an optimiser
    per phase, and the workers of a distributed run (None for a plain run)."""

    cfg: TrainConfig
    out: Path
    workers: Workers | None
    device: torch.device
    data: Splits
    model: torch.nn.Module
    schedule: list[Phase]
    optimizers: list[torch.optim.Optimizer]
    augmentation: Augmentation | None

    @property
    def rank(self) -> int:
        return self.workers.rank if self.workers is not None else 0

    @property
    def world(self) -> int:
        return self.workers.size if self.workers is not None else 1

    @property
    def num_params(self) -> int:
        return count_params(self.model)

    @property
    def global_batch(self) -> int:
        """Images per step over all workers: each trains `batch_size` of them."""
        return self.cfg.batch_size * self.world

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.data.train_x) / self.global_batch)


@dataclass
class EpochTotals:
    """The current epoch's sums so far; a checkpoint holds them as the dict ``as_dict``
    gives (``epoch_totals``)."""

    loss: float = 0.0  # minibatch losses times their images
    correct: int = 0
    seen: int = 0  # images scored
    updates: int = 0  # optimiser updates
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)  # EpochStats' state

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, saved: dict) -> EpochTotals:
        return cls(**saved)


@dataclass
class Progress:
    """How far a run has come: with the model and the optimisers, what its checkpoint holds."""

    # The data order's stream at the current epoch's start (a resumed epoch redraws its order).
    order_state: torch.Tensor
    # The augmentation stream, live: each worker augments its own images with its own.
    aug_gen: torch.Generator
    epoch: int = 0
    next_batch: int = 0
    elapsed: float = 0.0
    rows: list[dict] = field(default_factory=list)
    resumes: int = 0
    totals: EpochTotals = field(default_factory=EpochTotals)
    # Distributed: workers agree on when to checkpoint by counting minibatches (worker 0's
    # clock sets the count at each epoch's end): none in the first epoch.
    checkpoint_steps: int = 0

    @classmethod
    def start(cls, seed: int, device: torch.device, rank: int) -> Progress:
        # Separate streams, so that changing augmentation never changes the data order.
        return cls(
            order_state=torch.Generator().manual_seed(seed).get_state(),
            aug_gen=torch.Generator(device=device).manual_seed(seed + 1 + (rank << 32)),
        )

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: torch.device) -> Progress:
        aug_gen = torch.Generator(device=device)
        aug_gen.set_state(ckpt["aug_state"].to(aug_gen.get_state().device))
        return cls(
            order_state=ckpt["order_state"],
            aug_gen=aug_gen,
            epoch=ckpt["epoch"],
            next_batch=ckpt["next_batch"],
            elapsed=ckpt["elapsed"],
            rows=ckpt["rows"],
            resumes=ckpt["resumes"] + 1,
            totals=EpochTotals.from_dict(ckpt["epoch_totals"]),
        )

    def to_checkpoint(self) -> dict:
        """The checkpoint's progress entries (a distributed run adds its workers' own)."""
        return {
            "order_state": self.order_state,
            "aug_state": self.aug_gen.get_state().cpu(),
            "epoch": self.epoch,
            "next_batch": self.next_batch,
            "elapsed": self.elapsed,
            "rows": self.rows,
            "epoch_totals": self.totals.as_dict(),
            "resumes": self.resumes,
        }

    @property
    def stats(self) -> EpochStats:
        return EpochStats(self.totals.stats)

    def count_update(self, loss: float, correct: int, seen: int, minibatches: int) -> None:
        totals = self.totals
        totals.loss += loss * seen
        totals.correct += correct
        totals.seen += seen
        totals.updates += 1
        self.next_batch += minibatches

    def finish_epoch(self, row: dict, next_order_state: torch.Tensor) -> None:
        """Keep the finished epoch's row and seconds; stand at the next epoch's start."""
        self.rows.append(row)
        self.elapsed += self.totals.seconds
        self.epoch, self.next_batch = self.epoch + 1, 0
        self.totals = EpochTotals()
        self.order_state = next_order_state
