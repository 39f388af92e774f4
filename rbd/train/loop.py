"""The training loop, top to bottom: data, model, optimiser, epochs, checkpoints.

One call of `train(config, out_dir)` is one run. It resumes from
`out_dir/checkpoint.pt` when one is there, records a diverged run instead of
crashing, and writes `metrics.csv` and `run.json` only when the run has ended.
With `workers` (one worker of a distributed run, see `rbd.optim.distributed`) the
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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rbd import __version__
from rbd.optim import build_optimizer
from rbd.optim.seeded import SeededOptimizer
from rbd.spec import CHECKPOINT, METRICS, RUN_JSON, TrainConfig, method_options
from rbd.spec.io import run_lock, write_json, write_text
from rbd.train.checkpoints import Checkpoints, finished_record, resume
from rbd.train.data import Augmentation, Splits, load_dataset, preprocess
from rbd.train.models import build_model
from rbd.train.progress import SUMMARISED_STATS, EpochStats, Progress, Setup
from rbd.train.settings import Phase, check_settings, phases, resolve_device
from rbd.train.steps import step_times, take_step
from rbd.train.workers import check_identical, shard, sync_buffers

if TYPE_CHECKING:
    from rbd.optim.distributed import Workers

log = logging.getLogger(__name__)

STATUS_DONE, STATUS_DIVERGED = "done", "diverged"
EPOCH_TIME_COLUMNS = ("seconds", "images_per_s")


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
        lines.append(",".join(_csv_value(row.get(c)) for c in columns))
    return "\n".join(lines) + "\n"


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def train(cfg: TrainConfig, out_dir: str | Path, workers=None) -> dict:
    """Run (or resume, or skip if finished) one training run; return its run.json record.

    ``workers``: this process's `rbd.optim.distributed.Workers` when it is one of W
    workers (`rbd.train.launch.launch` passes it); None for a plain run. The
    run directory is locked for the run (worker 0 holds the lock).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if workers is not None and not workers.is_main:
        return _train(cfg, out, workers)
    with run_lock(out):
        return _train(cfg, out, workers)


def _train(cfg: TrainConfig, out: Path, workers: Workers | None) -> dict:
    """`train` inside the run directory: set up, resume, train epoch by epoch, record."""
    if cfg.overwrite:
        for name in (RUN_JSON, METRICS, CHECKPOINT):
            (out / name).unlink(missing_ok=True)
    if (out / RUN_JSON).exists() and (out / METRICS).exists():
        return finished_record(cfg, out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = workers.device if workers is not None else resolve_device(cfg.device)
    check_settings(cfg)
    data = _load_data(cfg, device)
    torch.manual_seed(cfg.seed)
    model = _on_device(build_model(cfg.model, tuple(data.train_x.shape[1:]), init=cfg.init), device)
    schedule = phases(cfg)
    optimizers = _build_optimizers(model, schedule, cfg, workers)
    augmentation = Augmentation(cfg.dataset) if cfg.augment else None
    setup = Setup(cfg, out, workers, device, data, model, schedule, optimizers, augmentation)
    progress = resume(setup)

    checkpoints = Checkpoints(setup)
    status = STATUS_DONE
    model.train()
    while progress.epoch < cfg.epochs and status == STATUS_DONE:
        phase, optimizer = _phase_of_epoch(setup, progress.epoch)
        permutation, next_order_state = _epoch_order(setup, progress.order_state)
        status = _train_epoch(setup, progress, phase, optimizer, permutation, checkpoints)
        if status != STATUS_DONE:
            break
        if workers is not None:
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
    if workers is not None and not workers.is_main:
        return record
    if status == STATUS_DONE and data.test_x is not None:
        record |= _test_scores(setup)
    write_text(out / METRICS, _metrics_csv(progress.rows))
    write_json(out / RUN_JSON, record)
    (out / CHECKPOINT).unlink(missing_ok=True)
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


def _build_optimizers(model, schedule: list[Phase], cfg: TrainConfig, workers) -> list:
    """One optimiser per phase (two when switching); distributed RBD's in a distributed run."""
    if workers is not None:
        return [_distributed_optimizer(model, cfg, workers) for _ in schedule]
    return [
        build_optimizer(
            p.method,
            model.parameters(),
            lr=p.lr,
            dim=cfg.dim,
            distribution=cfg.distribution,
            seed=cfg.seed,
            compartments=cfg.compartments,
            **method_options(p.method, cfg),
        )
        for p in schedule
    ]


def _phase_of_epoch(setup: Setup, epoch: int) -> tuple[Phase, torch.optim.Optimizer]:
    """The phase an epoch belongs to (switching: SGD's or the method's) and its optimiser."""
    i = next(i for i, p in enumerate(setup.schedule) if p.end_epoch > epoch)
    return setup.schedule[i], setup.optimizers[i]


def _epoch_order(setup: Setup, order_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's order of the training images, drawn from the order stream at
    `order_state`, and the stream's state after it (the next epoch's start)."""
    order_gen = torch.Generator()
    order_gen.set_state(order_state)
    permutation = torch.randperm(len(setup.data.train_x), generator=order_gen)
    return permutation.to(setup.device), order_gen.get_state()


def _train_epoch(
    setup: Setup,
    progress: Progress,
    phase: Phase,
    optimizer,
    permutation: torch.Tensor,
    checkpoints: Checkpoints,
) -> str:
    """Train the rest of the epoch, from `progress.next_batch`, with checkpoints when due.
    STATUS_DIVERGED as soon as a loss blows up; else STATUS_DONE, with the epoch's seconds
    in its accumulator."""
    cfg, totals, stats = setup.cfg, progress.totals, progress.stats
    offspring = _offspring_batches(cfg, phase)
    per_update = cfg.dim if offspring else 1
    label = f"epoch {progress.epoch + 1}/{cfg.epochs}"
    bar = _progress_bar(setup.num_batches, progress.next_batch, label, setup.rank)
    status = STATUS_DONE
    epoch_start = time.monotonic()
    while progress.next_batch < setup.num_batches:
        step_start = time.perf_counter()
        count = min(per_update, setup.num_batches - progress.next_batch)
        batches = _minibatches(setup, permutation, progress.next_batch, count, progress.aug_gen)
        loss, correct, seen = take_step(setup.model, optimizer, batches, offspring, cfg.l2)
        if setup.workers is not None:
            # All workers see the same gathered coordinates, hence agree.
            loss = math.nan if optimizer.diverged else loss
            stats.add(step_times(optimizer.stats, time.perf_counter() - step_start))
        if not math.isfinite(loss) or loss > cfg.divergence_loss:
            status = STATUS_DIVERGED
            log.warning(
                "diverged at epoch %d batch %d: loss %s",
                progress.epoch + 1,
                progress.next_batch,
                loss,
            )
            break
        stats.add(optimizer.stats if isinstance(optimizer, SeededOptimizer) else {})
        progress.count_update(loss, correct, seen, count)
        if bar is not None:
            bar.update(count)
        if checkpoints.due(progress):
            totals.seconds += time.monotonic() - epoch_start
            epoch_start = time.monotonic()
            checkpoints.save(progress)
    if bar is not None:
        bar.close()
    totals.seconds += time.monotonic() - epoch_start
    return status


def _offspring_batches(cfg: TrainConfig, phase: Phase) -> bool:
    """Whether an update spends a minibatch per offspring (NES with offspring batches, the
    epoch's last update taking what is left of it) rather than one minibatch."""
    return phase.method == "nes" and cfg.nes_batches == "offspring"


def _minibatches(
    setup: Setup, permutation: torch.Tensor, first: int, count: int, aug_gen: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's minibatches first..first+count-1 as this process trains them: its share
    of each global batch (distributed), augmented from its own stream, preprocessed."""
    batches = []
    for b in range(first, first + count):
        idx = permutation[b * setup.global_batch : (b + 1) * setup.global_batch]
        if setup.workers is not None:
            idx = shard(setup.workers, idx)
        x, y = setup.data.train_x[idx], setup.data.train_y[idx]
        if setup.augmentation is not None:
            x = setup.augmentation(x, aug_gen)
        batches.append((preprocess(setup.cfg.dataset, x), y))
    return batches


def _epoch_totals_over_workers(setup: Setup, progress: Progress) -> None:
    """A distributed epoch's end: batch norm's buffers made equal and the parameters checked
    equal on every worker; the epoch's sums totalled over workers, its seconds worker 0's."""
    workers, totals = setup.workers, progress.totals
    sync_buffers(workers, setup.model)
    check_identical(workers, setup.model, progress.epoch + 1)
    mine = [totals.loss, totals.correct, totals.seen, totals.seconds]
    sums = workers.all_gather(torch.tensor(mine, dtype=torch.float64, device=setup.device))
    loss_sum, correct, seen = sums[:, :3].sum(0).tolist()
    # Floats from the gathered sums, counts included.
    totals.loss, totals.correct, totals.seen = loss_sum, correct, seen
    totals.seconds = float(sums[0, 3])


def _epoch_row(setup: Setup, progress: Progress, phase: Phase, optimizer) -> dict:
    """The finished epoch's row of metrics.csv, with its validation scores."""
    cfg, totals, data = setup.cfg, progress.totals, setup.data
    val_loss, val_acc = evaluate(
        setup.model, data.val_x, data.val_y, cfg.dataset, cfg.eval_batch_size
    )
    seen, seconds = max(totals.seen, 1), totals.seconds
    stats = progress.stats
    row = {
        "epoch": progress.epoch + 1,
        "method": phase.method,
        "train_loss": totals.loss / seen,
        "train_acc": 100.0 * totals.correct / seen,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "updates": totals.updates,
        **stats.summary(SUMMARISED_STATS),
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else math.nan,
    }
    if setup.workers is not None:
        row |= _distributed_columns(optimizer, stats, setup.world, setup.num_params)
    return row


def _final_record(setup: Setup, progress: Progress, status: str) -> dict:
    """run.json's record (without the test scores, which worker 0 adds)."""
    cfg, device, num_params = setup.cfg, setup.device, setup.num_params
    # SGD (torch.optim's) trains every parameter: D coordinates, compression 1.
    last = setup.optimizers[-1]
    num_coordinates = int(last.num_coordinates if isinstance(last, SeededOptimizer) else num_params)
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
    if setup.workers is not None:
        record |= {
            "workers": setup.world,
            "bytes_per_step": setup.optimizers[-1].bytes_per_step,
            "sgd_bytes_per_step": 4 * num_params,
        }
    return record


def _test_scores(setup: Setup) -> dict:
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


def _distributed_optimizer(model, cfg: TrainConfig, workers):
    from rbd.optim.distributed import DistributedRBD

    return DistributedRBD(
        model.parameters(),
        workers,
        sharing=cfg.sharing,
        combine=cfg.combine,
        loss_limit=cfg.divergence_loss,
        lr=cfg.lr,
        dim=cfg.dim,
        distribution=cfg.distribution,
        seed=cfg.seed,
        compartments=cfg.compartments,
        normalize=cfg.normalize,
    )


def _distributed_columns(optimizer, stats: EpochStats, world: int, num_params: int) -> dict:
    from rbd.optim.distributed import STEP_TIME_COLUMNS

    means = stats.summary(STEP_TIME_COLUMNS)
    return {
        "workers": world,
        "bytes_per_step": optimizer.bytes_per_step,
        "sgd_bytes_per_step": 4 * num_params,
        **{name: means[f"{name}_mean"] for name in STEP_TIME_COLUMNS},
    }


def _progress_bar(total: int, done: int, label: str, rank: int = 0):
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
