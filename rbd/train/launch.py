"""Process launching for distributed RBD: torchrun's workers, or W spawned here.

Above the training loop: `launch` starts (or joins) the process group and calls
`rbd.train.loop.train` in every worker, so that `rbd.optim.distributed` holds only the
optimiser and its workers, and `rbd.train.loop` never imports this module.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from rbd.optim.distributed import Workers
from rbd.spec import RUN_JSON
from rbd.train.loop import train
from rbd.train.settings import check_settings, resolve_device


def under_torchrun() -> bool:
    """Whether torchrun started this process (as one of its workers)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(cfg, out_dir) -> dict:
    """Train ``cfg`` with ``cfg.workers`` workers; returns worker 0's run.json record.

    Under torchrun (RANK and WORLD_SIZE set) this process is one worker and
    WORLD_SIZE must equal ``cfg.workers``. Otherwise W > 1 local processes
    are spawned and joined here (if one fails, the others are stopped and the
    error is raised here). Backend: NCCL on CUDA, gloo on CPU.
    """
    check_settings(cfg)
    if cfg.workers is None:
        raise ValueError("workers: launch trains a distributed run; set workers (>= 1)")
    if under_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if world != cfg.workers:
            raise ValueError(f"workers={cfg.workers} but torchrun started {world} processes")
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = _worker_device(cfg.device, local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            return train(cfg, out_dir, workers=Workers(rank, world, device))
        finally:
            dist.destroy_process_group()
    if cfg.workers == 1:
        return train(cfg, out_dir, workers=Workers(0, 1, resolve_device(cfg.device)))

    import json

    import torch.multiprocessing as mp

    rendezvous = tempfile.mkdtemp(prefix="rbd-rendezvous-")
    try:
        mp.start_processes(
            _spawned,
            args=(cfg, str(out_dir), os.path.join(rendezvous, "store"), logging.root.level),
            nprocs=cfg.workers,
            join=True,
            start_method=_start_method(cfg.device, cfg.threads),
        )
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)
    return json.loads((Path(out_dir) / RUN_JSON).read_text())


def _start_method(device: str, threads: int | None) -> str:
    """ "fork" for one-thread CPU workers where the platform has it: they start with
    PyTorch already imported (a spawned worker spends seconds importing it again).
    "spawn" otherwise: a forked child cannot use CUDA once the parent has touched it, and
    hangs in its first multi-threaded op once the parent has run OpenMP threads."""
    import multiprocessing

    one_thread_cpu = resolve_device(device).type == "cpu" and threads == 1
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    return "fork" if one_thread_cpu and can_fork else "spawn"


def _worker_device(name: str, local_rank: int) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _spawned(rank: int, cfg, out_dir: str, store: str, level: int) -> None:
    """One spawned worker: join the group through a file store, train, leave."""
    logging.basicConfig(
        level=level if rank == 0 else max(level, logging.WARNING),
        format=f"%(asctime)s %(levelname)s [worker {rank}] %(message)s",
    )
    if cfg.threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // cfg.workers))
    device = _worker_device(cfg.device, rank)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=cfg.workers,
    )
    try:
        train(cfg, out_dir, workers=Workers(rank, cfg.workers, device))
    finally:
        dist.destroy_process_group()
