"""The training loop, top to bottom: data, model, optimiser, epochs, checkpoints.

One call of `train(config, out_dir)` is one run. It resumes from
`out_dir/checkpoint.pt` when one is there, records a diverged run instead of
crashing, and writes `metrics.csv` and `run.json` only when the run has ended.
With `group` (one worker of a distributed run, see `rbd.distributed`) the
same loop runs in every worker on its share of each global batch; worker 0
writes the outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rbd import __version__, cost
from rbd.data import Augmentation, Splits, load_dataset, preprocess
from rbd.io import load_torch, run_lock, save_torch, write_json, write_text
from rbd.models import build_model, count_params
from rbd.optim import build_optimizer, module_loss
from rbd.runs import RunDirectoryError, RunSpec

if TYPE_CHECKING:
    from rbd.distributed import Group

log = logging.getLogger("rbd.train")

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
RUN_JSON = "run.json"
TIMING_COLUMNS = ("seconds", "images_per_s")
STATUS_DONE, STATUS_DIVERGED = "done", "diverged"
# NES: each offspring on its own minibatch (the authors'), or all on one.
NES_BATCHES = ("offspring", "shared")
SWITCH_KINDS = ("sgd_first", "sgd_last")


@dataclass(frozen=True)
class TrainConfig(RunSpec):
    """A run's settings plus how to execute it (which do not change its result)."""

    data_dir: str | None = None
    # Replace whatever the run directory holds instead of refusing other settings.
    overwrite: bool = False
    device: str = "auto"
    threads: int | None = None
    checkpoint_minutes: float = 10.0
    divergence_loss: float = 1e3
    train_limit: int | None = None
    eval_batch_size: int = 1000

    @property
    def spec(self) -> RunSpec:
        names = {f.name for f in fields(RunSpec)}
        return RunSpec(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs trained with one method (two phases when switching)."""

    method: str
    lr: float
    first_epoch: int
    end_epoch: int


def phases(cfg: TrainConfig) -> list[Phase]:
    if cfg.switch == "none":
        return [Phase(cfg.method, cfg.lr, 0, cfg.epochs)]
    kind, _, at = cfg.switch.partition(":")
    k = int(at)
    sgd_lr = cfg.sgd_lr if cfg.sgd_lr is not None else cfg.lr
    if kind == "sgd_first":
        parts = [Phase("sgd", sgd_lr, 0, k), Phase(cfg.method, cfg.lr, k, cfg.epochs)]
    elif kind == "sgd_last":
        parts = [Phase(cfg.method, cfg.lr, 0, k), Phase("sgd", sgd_lr, k, cfg.epochs)]
    else:
        raise ValueError(f"switch {cfg.switch!r}: use one of {SWITCH_KINDS} as '<kind>:<epoch>'")
    return [p for p in parts if p.end_epoch > p.first_epoch]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was requested but CUDA is not available here; "
            "use device 'auto' or 'cpu'"
        )
    return device


class StepStats:
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


@torch.no_grad()
def evaluate(model, x, y, dataset: str, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of `model` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(preprocess(dataset, x[i : i + batch_size]))
        target = y[i : i + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    model.train(was_training)
    return loss_sum / len(x), 100.0 * correct / len(x)


def library_versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {
        "rbd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }


def _metrics_csv(rows: list[dict]) -> str:
    if not rows:
        return "epoch\n"
    # Every column of any row, in first-seen order: rows resumed from an older
    # checkpoint may lack a column that later rows have (an empty cell, not a lost column).
    columns = list(dict.fromkeys(c for row in [rows[-1], *rows] for c in row))
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_cell(row.get(c)) for c in columns))
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def train(cfg: TrainConfig, out_dir: str | Path, group=None) -> dict:
    """Run (or resume, or skip if finished) one training run; return its run.json record.

    ``group``: this process's `rbd.distributed.Group` when it is one of W
    workers (`rbd.launch.launch` passes it); None for a plain run. The
    run directory is locked for the run (worker 0 holds the lock).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if group is not None and not group.is_main:
        return _train(cfg, out, group)
    with run_lock(out):
        return _train(cfg, out, group)


def _train(cfg: TrainConfig, out: Path, group: Group | None) -> dict:
    """`train` inside the run directory: set up, resume, train epoch by epoch, record."""
    if cfg.overwrite:
        for name in (RUN_JSON, METRICS, CHECKPOINT):
            (out / name).unlink(missing_ok=True)
    if (out / RUN_JSON).exists() and (out / METRICS).exists():
        return _finished_record(cfg, out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = group.device if group is not None else resolve_device(cfg.device)
    check_settings(cfg)
    data = _load_data(cfg, device)
    torch.manual_seed(cfg.seed)
    model = _on_device(build_model(cfg.model, tuple(data.train_x.shape[1:]), init=cfg.init), device)
    schedule = phases(cfg)
    optimizers = _build_optimizers(model, schedule, cfg, group)
    augmentation = Augmentation(cfg.dataset) if cfg.augment else None
    setup = _Setup(cfg, out, group, device, data, model, schedule, optimizers, augmentation)
    progress = _resume(setup)

    checkpoints = _Checkpoints(setup)
    status = STATUS_DONE
    model.train()
    while progress.epoch < cfg.epochs and status == STATUS_DONE:
        phase, optimizer = _phase_of_epoch(setup, progress.epoch)
        permutation, next_order_state = _epoch_order(setup, progress.order_state)
        status = _train_epoch(setup, progress, phase, optimizer, permutation, checkpoints)
        if status != STATUS_DONE:
            break
        if group is not None:
            _epoch_totals_over_workers(setup, progress)
            checkpoints.set_steps(progress)
        row = _epoch_row(setup, progress, phase, optimizer)
        if not math.isfinite(row["val_loss"]):
            status = STATUS_DIVERGED
        if setup.rank == 0:
            _log_epoch(row, cfg.epochs)
        progress.finish_epoch(row, next_order_state)
        checkpoints.save(progress)

    record = _final_record(setup, progress, status)
    if group is not None and not group.is_main:
        return record
    if status == STATUS_DONE and data.test_x is not None:
        record |= _test_scores(setup)
    write_text(out / METRICS, _metrics_csv(progress.rows))
    write_json(out / RUN_JSON, record)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return record


@dataclass(frozen=True)
class _Setup:
    """What a run trains with, fixed once built: its settings, data, model, an optimiser
    per phase, and the process group of a distributed run (None for a plain run)."""

    cfg: TrainConfig
    out: Path
    group: Group | None
    device: torch.device
    data: Splits
    model: torch.nn.Module
    schedule: list[Phase]
    optimizers: list[torch.optim.Optimizer]
    augmentation: Augmentation | None

    @property
    def rank(self) -> int:
        return self.group.rank if self.group is not None else 0

    @property
    def world(self) -> int:
        return self.group.size if self.group is not None else 1

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


def _new_epoch_accumulator() -> dict:
    return {"loss": 0.0, "correct": 0, "seen": 0, "updates": 0, "seconds": 0.0, "stats": {}}


@dataclass
class _Progress:
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
    # The current epoch's sums so far (see _new_epoch_accumulator); "stats" is StepStats' state.
    epoch_acc: dict = field(default_factory=_new_epoch_accumulator)
    # Distributed: workers agree on when to checkpoint by counting minibatches (worker 0's
    # clock sets the count at each epoch's end): none in the first epoch.
    checkpoint_steps: int = 0

    @classmethod
    def start(cls, seed: int, device: torch.device, rank: int) -> _Progress:
        # Separate streams, so that changing augmentation never changes the data order.
        return cls(
            order_state=torch.Generator().manual_seed(seed).get_state(),
            aug_gen=torch.Generator(device=device).manual_seed(seed + 1 + (rank << 32)),
        )

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: torch.device) -> _Progress:
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
            # Over the empty accumulator: a checkpoint written before a counter existed resumes.
            epoch_acc=_new_epoch_accumulator() | ckpt["epoch_acc"],
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
            "epoch_acc": self.epoch_acc,
            "resumes": self.resumes,
        }

    @property
    def stats(self) -> StepStats:
        return StepStats(self.epoch_acc["stats"])

    def count_update(self, loss: float, correct: int, seen: int, minibatches: int) -> None:
        acc = self.epoch_acc
        acc["loss"] += loss * seen
        acc["correct"] += correct
        acc["seen"] += seen
        acc["updates"] += 1
        self.next_batch += minibatches

    def finish_epoch(self, row: dict, next_order_state: torch.Tensor) -> None:
        """Keep the finished epoch's row and seconds; stand at the next epoch's start."""
        self.rows.append(row)
        self.elapsed += self.epoch_acc["seconds"]
        self.epoch, self.next_batch = self.epoch + 1, 0
        self.epoch_acc = _new_epoch_accumulator()
        self.order_state = next_order_state


def _finished_record(cfg: TrainConfig, out: Path) -> dict:
    """The record of a run that has ended, asked for again with the same settings."""
    record = _read_record(out / RUN_JSON)
    _check_same_run(cfg, record.get("config", {}), out / RUN_JSON)
    log.info("%s already finished; nothing to do", out)
    return record


def _load_data(cfg: TrainConfig, device: torch.device) -> Splits:
    """The data set with its training and validation sets on the device (the test set
    moves there only at the end, for the final scores)."""
    data = load_dataset(cfg.dataset, cfg.data_dir)
    train_x, train_y = data.train_x, data.train_y
    if cfg.train_limit:
        # A fixed random subset: data sets may be stored sorted by class.
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
        keep = keep[: cfg.train_limit]
        train_x, train_y = train_x[keep], train_y[keep]
    return dataclasses.replace(
        data,
        train_x=train_x.to(device),
        train_y=train_y.to(device),
        val_x=data.val_x.to(device),
        val_y=data.val_y.to(device),
    )


def _on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``; on a CPU, convolutional models in the channels-last memory
    format: oneDNN's pooling and convolution kernels for it make a CNN step 30 % faster
    (max-pooling alone 16x). Only the layout changes: the optimisers flatten parameters
    and gradients in their logical order, so a run's values differ by rounding only."""
    model = model.to(device)
    if device.type == "cpu" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def _build_optimizers(model, schedule: list[Phase], cfg: TrainConfig, group) -> list:
    """One optimiser per phase (two when switching); distributed RBD's in a distributed run."""
    if group is not None:
        return [_distributed_optimizer(model, cfg, group) for _ in schedule]
    return [
        build_optimizer(
            p.method,
            model.parameters(),
            lr=p.lr,
            dim=cfg.dim,
            distribution=cfg.distribution,
            seed=cfg.seed,
            compartments=cfg.compartments,
            **_method_options(p.method, cfg),
        )
        for p in schedule
    ]


def _resume(setup: _Setup) -> _Progress:
    """The progress saved in checkpoint.pt, with the model and optimisers loaded from it;
    the start of the run when there is none."""
    path = setup.out / CHECKPOINT
    ckpt = _read_checkpoint(path)
    if ckpt is None:
        return _Progress.start(setup.cfg.seed, setup.device, setup.rank)
    _check_same_run(setup.cfg, ckpt.get("spec", {}), path)
    setup.model.load_state_dict(ckpt["model"])
    for opt, state in zip(setup.optimizers, ckpt["optimizers"], strict=True):
        opt.load_state_dict(state)
    progress = _Progress.from_checkpoint(ckpt, setup.device)
    if setup.group is not None:
        _resume_worker(progress, ckpt, setup.rank)
    log.info("resumed %s at epoch %d, batch %d", setup.out, progress.epoch + 1, progress.next_batch)
    return progress


def _resume_worker(progress: _Progress, ckpt: dict, rank: int) -> None:
    """A distributed worker takes back its own augmentation stream and epoch sums."""
    progress.aug_gen.set_state(ckpt["aug_states"][rank].to(progress.aug_gen.get_state().device))
    loss_sum, correct, seen = ckpt["worker_acc"][rank].tolist()
    progress.epoch_acc |= {"loss": loss_sum, "correct": int(correct), "seen": int(seen)}
    progress.checkpoint_steps = ckpt["checkpoint_steps"]


def _save_checkpoint(setup: _Setup, progress: _Progress) -> None:
    """Write checkpoint.pt. Distributed: every worker must call it (its own streams and sums
    are gathered); worker 0 writes."""
    workers = {}
    if setup.group is not None:
        workers = _worker_states(setup.group, progress)
        if not setup.group.is_main:
            return
    save_torch(
        setup.out / CHECKPOINT,
        {
            **workers,
            "spec": dataclasses.asdict(setup.cfg.spec),
            "model": setup.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in setup.optimizers],
            **progress.to_checkpoint(),
        },
    )


def _worker_states(group: Group, progress: _Progress) -> dict:
    """Every worker's augmentation stream and epoch sums, gathered, and the step count."""
    acc = progress.epoch_acc
    sums = [acc["loss"], acc["correct"], acc["seen"]]
    return {
        # One tensor per worker, each its own storage: set_state ignores a view's storage offset.
        "aug_states": [s.clone() for s in group.all_gather(progress.aug_gen.get_state()).cpu()],
        "worker_acc": [s.clone() for s in group.all_gather(torch.tensor(sums).double())],
        "checkpoint_steps": progress.checkpoint_steps,
    }


class _Checkpoints:
    """When to write checkpoint.pt within an epoch: every `checkpoint_minutes` by this
    process's clock; distributed, every `progress.checkpoint_steps` minibatches, a count all
    workers share (the clocks of separate processes would disagree)."""

    def __init__(self, setup: _Setup):
        self.setup = setup
        self.every_s = setup.cfg.checkpoint_minutes * 60.0
        self.last = time.monotonic()

    def due(self, progress: _Progress) -> bool:
        if self.setup.group is None:
            return time.monotonic() - self.last > self.every_s
        steps = progress.checkpoint_steps
        return bool(steps) and progress.next_batch % steps == 0

    def save(self, progress: _Progress) -> None:
        _save_checkpoint(self.setup, progress)
        self.last = time.monotonic()

    def set_steps(self, progress: _Progress) -> None:
        """Distributed: the minibatches per interval at the pace of the epoch just ended."""
        seconds = progress.epoch_acc["seconds"]
        progress.checkpoint_steps = max(
            1, int(self.every_s * self.setup.num_batches / max(seconds, 1e-9))
        )


def _phase_of_epoch(setup: _Setup, epoch: int) -> tuple[Phase, torch.optim.Optimizer]:
    """The phase an epoch belongs to (switching: SGD's or the method's) and its optimiser."""
    i = next(i for i, p in enumerate(setup.schedule) if p.end_epoch > epoch)
    return setup.schedule[i], setup.optimizers[i]


def _epoch_order(setup: _Setup, order_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's order of the training images, drawn from the order stream at
    `order_state`, and the stream's state after it (the next epoch's start)."""
    order_gen = torch.Generator()
    order_gen.set_state(order_state)
    permutation = torch.randperm(len(setup.data.train_x), generator=order_gen)
    return permutation.to(setup.device), order_gen.get_state()


def _train_epoch(
    setup: _Setup,
    progress: _Progress,
    phase: Phase,
    optimizer,
    permutation: torch.Tensor,
    checkpoints: _Checkpoints,
) -> str:
    """Train the rest of the epoch, from `progress.next_batch`, with checkpoints when due.
    STATUS_DIVERGED as soon as a loss blows up; else STATUS_DONE, with the epoch's seconds
    in its accumulator."""
    cfg, acc, stats = setup.cfg, progress.epoch_acc, progress.stats
    offspring = _offspring_batches(cfg, phase)
    per_update = cfg.dim if offspring else 1
    label = f"epoch {progress.epoch + 1}/{cfg.epochs}"
    bar = _progress(setup.num_batches, progress.next_batch, label, setup.rank)
    status = STATUS_DONE
    epoch_start = time.monotonic()
    while progress.next_batch < setup.num_batches:
        step_start = time.perf_counter()
        count = min(per_update, setup.num_batches - progress.next_batch)
        batches = _minibatches(setup, permutation, progress.next_batch, count, progress.aug_gen)
        loss, correct, seen = _update(setup.model, optimizer, phase.method, batches, offspring)
        if setup.group is not None:
            # All workers see the same gathered coordinates, hence agree.
            loss = math.nan if optimizer.diverged else loss
            stats.add(_step_times(optimizer.stats, time.perf_counter() - step_start))
        if not math.isfinite(loss) or loss > cfg.divergence_loss:
            status = STATUS_DIVERGED
            log.warning(
                "diverged at epoch %d batch %d: loss %s",
                progress.epoch + 1,
                progress.next_batch,
                loss,
            )
            break
        stats.add(getattr(optimizer, "stats", {}))
        progress.count_update(loss, correct, seen, count)
        if bar is not None:
            bar.update(count)
        if checkpoints.due(progress):
            acc["seconds"] += time.monotonic() - epoch_start
            epoch_start = time.monotonic()
            checkpoints.save(progress)
    if bar is not None:
        bar.close()
    acc["seconds"] += time.monotonic() - epoch_start
    return status


def _offspring_batches(cfg: TrainConfig, phase: Phase) -> bool:
    """Whether an update spends a minibatch per offspring (NES with offspring batches, the
    epoch's last update taking what is left of it) rather than one minibatch."""
    return phase.method == "nes" and cfg.nes_batches == "offspring"


def _minibatches(
    setup: _Setup, permutation: torch.Tensor, first: int, count: int, aug_gen: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's minibatches first..first+count-1 as this process trains them: its share
    of each global batch (distributed), augmented from its own stream, preprocessed."""
    batches = []
    for b in range(first, first + count):
        idx = permutation[b * setup.global_batch : (b + 1) * setup.global_batch]
        if setup.group is not None:
            idx = setup.group.shard(idx)
        x, y = setup.data.train_x[idx], setup.data.train_y[idx]
        if setup.augmentation is not None:
            x = setup.augmentation(x, aug_gen)
        batches.append((preprocess(setup.cfg.dataset, x), y))
    return batches


def _update(model, optimizer, method: str, batches, offspring: bool) -> tuple[float, int, int]:
    """One optimiser update; its loss, and the correct answers and images it was scored on."""
    if offspring:
        return _nes_offspring_step(model, optimizer, batches)
    ((x, y),) = batches
    loss, logits = _train_step(model, optimizer, method, x, y)
    return loss, int((logits.argmax(1) == y).sum()), len(y)


def _epoch_totals_over_workers(setup: _Setup, progress: _Progress) -> None:
    """A distributed epoch's end: batch norm's buffers made equal and the parameters checked
    equal on every worker; the epoch's sums totalled over workers, its seconds worker 0's."""
    group, acc = setup.group, progress.epoch_acc
    group.sync_buffers(setup.model)
    group.check_identical(setup.model, progress.epoch + 1)
    mine = [acc["loss"], acc["correct"], acc["seen"], acc["seconds"]]
    sums = group.all_gather(torch.tensor(mine, dtype=torch.float64, device=setup.device))
    loss_sum, correct, seen = sums[:, :3].sum(0).tolist()
    acc |= {"loss": loss_sum, "correct": correct, "seen": seen, "seconds": float(sums[0, 3])}


def _epoch_row(setup: _Setup, progress: _Progress, phase: Phase, optimizer) -> dict:
    """The finished epoch's row of metrics.csv, with its validation scores."""
    cfg, acc, data = setup.cfg, progress.epoch_acc, setup.data
    val_loss, val_acc = evaluate(
        setup.model, data.val_x, data.val_y, cfg.dataset, cfg.eval_batch_size
    )
    seen, seconds = max(acc["seen"], 1), acc["seconds"]
    stats = progress.stats
    row = {
        "epoch": progress.epoch + 1,
        "method": phase.method,
        "train_loss": acc["loss"] / seen,
        "train_acc": 100.0 * acc["correct"] / seen,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "updates": acc["updates"],
        **stats.summary(SUMMARISED_STATS),
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else math.nan,
    }
    if setup.group is not None:
        row |= _distributed_columns(optimizer, stats, setup.world, setup.num_params)
    return row


def _final_record(setup: _Setup, progress: _Progress, status: str) -> dict:
    """run.json's record (without the test scores, which worker 0 adds)."""
    cfg, device, num_params = setup.cfg, setup.device, setup.num_params
    # SGD trains every parameter: D coordinates, compression 1.
    num_coordinates = int(getattr(setup.optimizers[-1], "num_coordinates", num_params))
    record = {
        "run_key": cfg.spec.key,
        "config": dataclasses.asdict(cfg),
        "method": cfg.method,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "dim": cfg.dim,
        "num_params": num_params,
        "num_coordinates": num_coordinates,
        "compression": num_params / num_coordinates,
        "status": status,
        "epochs_completed": len(progress.rows),
        "final_val_acc": progress.rows[-1]["val_acc"] if progress.rows else None,
        "seconds": progress.elapsed,
        "resumes": progress.resumes,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if setup.group is not None:
        record |= {
            "workers": setup.world,
            "bytes_per_step": setup.optimizers[-1].bytes_per_step,
            "sgd_bytes_per_step": 4 * num_params,
        }
    return record


def _test_scores(setup: _Setup) -> dict:
    """The test set's scores: measured once, when a run has ended without diverging."""
    cfg, data, device = setup.cfg, setup.data, setup.device
    test_loss, test_acc = evaluate(
        setup.model,
        data.test_x.to(device),
        data.test_y.to(device),
        cfg.dataset,
        cfg.eval_batch_size,
    )
    return {"test_loss": test_loss, "test_acc": test_acc}


def check_settings(cfg: TrainConfig) -> None:
    """Settings that cannot work, found before any data is loaded (ValueError naming them)."""
    if cfg.nes_batches not in NES_BATCHES:
        raise ValueError(f"nes_batches {cfg.nes_batches!r}: choose one of {NES_BATCHES}")
    if cfg.method != "sgd":
        num_params = cost.num_params(cfg.model, cfg.dataset)
        if cfg.dim > num_params:
            raise ValueError(
                f"dim={cfg.dim} exceeds D = {num_params:,}, the parameters of {cfg.model} on "
                f"{cfg.dataset}; choose dim <= {num_params:,}"
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


def _method_options(method: str, cfg: TrainConfig) -> dict:
    """The settings that only some methods take."""
    if method == "nes":
        return {"sigma": cfg.nes_sigma, "normalize_update": cfg.nes_normalize}
    compartments = {
        "normalize": cfg.normalize,
        "compartment_scale": cfg.compartment_scale,
        "even_dims": cfg.even_dims,
    }
    if method == "rbd":
        return compartments | {"coordinates": cfg.coordinates}
    if method == "fpd":
        return compartments | {"offset": cfg.fpd_offset}
    return {}


def _distributed_optimizer(model, cfg: TrainConfig, group):
    from rbd.distributed import DistributedRBD

    return DistributedRBD(
        model.parameters(),
        group,
        bases=cfg.bases,
        combine=cfg.combine,
        loss_limit=cfg.divergence_loss,
        lr=cfg.lr,
        dim=cfg.dim,
        distribution=cfg.distribution,
        seed=cfg.seed,
        compartments=cfg.compartments,
        normalize=cfg.normalize,
    )


def _step_times(stats: dict, step_s: float) -> dict:
    """A distributed step's wall time, split: the rest of the step is compute
    (forward, backward, own coordinates and own update)."""
    comm, regen = stats.get("comm_s", 0.0), stats.get("regen_s", 0.0)
    return {"step_s": step_s, "compute_s": step_s - comm - regen, "regen_s": regen, "comm_s": comm}


def _distributed_columns(optimizer, stats: StepStats, world: int, num_params: int) -> dict:
    from rbd.distributed import TIMING_COLUMNS

    means = stats.summary(TIMING_COLUMNS)
    return {
        "workers": world,
        "bytes_per_step": optimizer.bytes_per_step,
        "sgd_bytes_per_step": 4 * num_params,
        **{name: means[f"{name}_mean"] for name in TIMING_COLUMNS},
    }


@contextmanager
def unchanged_buffers(model: torch.nn.Module):
    """Batch norm's running statistics move once per step, with the step's own forward
    pass; the extra forward passes of NES (perturbed parameters) and of forward-mode
    coordinates must not move them again."""
    saved = [buffer.clone() for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)


def _train_step(model, optimizer, method: str, x, y) -> tuple[float, torch.Tensor]:
    """One optimiser step on (x, y); returns the minibatch loss and logits before the step."""
    optimizer.zero_grad(set_to_none=True)
    if len(y) == 0:  # a worker's empty share of the last, short global batch
        optimizer.step(loss=0.0)
        return 0.0, torch.zeros(0, 10, device=y.device)
    if method == "nes":
        with torch.no_grad():
            logits = model(x)
            loss = F.cross_entropy(logits, y)

        def closure():
            with torch.no_grad():
                return F.cross_entropy(model(x), y)

        with unchanged_buffers(model):
            optimizer.step(closure)
        return loss.item(), logits
    if getattr(optimizer, "coordinates", "backward") == "forward":  # RBD by jvps
        with torch.no_grad():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        with unchanged_buffers(model):
            optimizer.step(module_loss(model, lambda out: F.cross_entropy(out, y), x))
        return loss.item(), logits
    with optimizer.offset_point() if hasattr(optimizer, "offset_point") else nullcontext():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
    if hasattr(optimizer, "loss_limit"):  # distributed: a diverged worker tells all
        optimizer.step(loss=loss.item())
    else:
        optimizer.step()
    return loss.item(), logits.detach()


def _nes_offspring_step(model, optimizer, batches) -> tuple[float, int, int]:
    """One NES update whose offspring i is scored on ``batches[i]``, as in the authors'
    code; returns the offspring's mean loss, and their correct count and images (what the
    authors report as training loss and accuracy: no extra unperturbed passes).

    A model with batch norm gets one unperturbed forward pass on the first minibatch, so
    that its running statistics move once per update, as under every other method."""
    correct = [0]
    if any(True for _ in model.buffers()):
        with torch.no_grad():
            model(batches[0][0])

    def offspring(x, y):
        def closure():
            logits = model(x)
            correct[0] += int((logits.argmax(1) == y).sum())
            return F.cross_entropy(logits, y)

        return closure

    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad(), unchanged_buffers(model):
        loss = optimizer.step(offspring=[offspring(x, y) for x, y in batches])
    return float(loss), correct[0], sum(len(y) for _, y in batches)


def _progress(total: int, done: int, label: str, rank: int = 0):
    """A tqdm bar on a terminal; None (one log line per epoch instead) in batch jobs."""
    if rank != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=label, leave=False, unit="batch")


def _log_epoch(row: dict, epochs: int) -> None:
    log.info(
        "epoch %d/%d  train_loss %.4f  train_acc %.2f  val_loss %.4f  val_acc %.2f"
        "  grad_corr %.4f (per tensor %.4f)  %.1f s  %.0f img/s",
        row["epoch"],
        epochs,
        row["train_loss"],
        row["train_acc"],
        row["val_loss"],
        row["val_acc"],
        row["grad_corr_mean"],
        row["grad_corr_tensors_mean"],
        row["seconds"],
        row["images_per_s"],
    )
