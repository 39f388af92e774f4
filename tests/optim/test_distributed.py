"""Distributed RBD: two gloo workers against a single process that simulates them in turn."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import rbd.train.steps as steps_module
from rbd.bases import expand, project, step_seeds
from rbd.optim import build_optimizer
from rbd.optim.distributed import STEP_TIME_COLUMNS, DistributedRBD, Workers
from rbd.spec import TrainConfig
from rbd.train.launch import launch
from rbd.train.loop import EPOCH_TIME_COLUMNS, train
from rbd.train.models import build_model
from rbd.train.workers import check_identical, shard
from tests.helpers import run_rbd

WORKERS, DIM, LR, SEED, STEPS, BATCH = 2, 40, 4.0, 5, 3, 16
MODES = (("worker", "sum"), ("split", "sum"), ("shared", "mean"))


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(STEPS * WORKERS * BATCH, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (len(x),), generator=gen)
    return x, y


def _model():
    torch.manual_seed(SEED)
    return build_model("fc", (1, 28, 28))


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _grad(model, x, y) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _set(model, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def _steps_worker(rank: int, store: str, out: str) -> None:
    """One of two gloo workers: STEPS steps per mode, worker 0 saves the parameters."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORKERS)
    try:
        group = Workers(rank, WORKERS, torch.device("cpu"))
        x, y = _data()
        results = {}
        for bases, combine in MODES:
            model = _model()
            opt = DistributedRBD(
                model.parameters(), group, sharing=bases, combine=combine, lr=LR, dim=DIM, seed=SEED
            )
            for t in range(STEPS):
                idx = shard(group, torch.arange(t * WORKERS * BATCH, (t + 1) * WORKERS * BATCH))
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            check_identical(group, model, STEPS)
            results[bases] = (_flat(model), opt.bytes_per_step)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _simulate(bases: str, combine: str) -> torch.Tensor:
    """The two workers in turn, in one process, from the engine's functions only."""
    torch.set_num_threads(1)
    model, (x, y) = _model(), _data()
    size = sum(p.numel() for p in model.parameters())
    for t in range(STEPS):
        theta = _flat(model)
        total = torch.zeros(size)
        for w in range(WORKERS):
            lo = (t * WORKERS + w) * BATCH
            g = _grad(model, x[lo : lo + BATCH], y[lo : lo + BATCH])
            if bases == "worker":
                seeds = step_seeds(SEED, t, 0, w, DIM)
            elif bases == "split":
                seeds = step_seeds(SEED, t, 0, 0, DIM)[
                    w * DIM // WORKERS : (w + 1) * DIM // WORKERS
                ]
            else:
                seeds = step_seeds(SEED, t, 0, 0, DIM)
            total += project(g, seeds, "gaussian")[1]
        if combine == "mean":
            total /= WORKERS
        _set(model, theta - LR * total)
    return _flat(model)


def test_expand_rebuilds_the_projected_update_bit_for_bit():
    g = torch.randn(10_000)
    seeds = step_seeds(1, 2, 0, 1, 37)
    for normalize in (True, False):
        coords, update = project(g, seeds, "rademacher", normalize=normalize, chunk_size=8)
        rebuilt = expand(coords, seeds, len(g), "rademacher", normalize=normalize, chunk_size=8)
        assert torch.equal(rebuilt, update)


def test_two_gloo_workers_match_one_process_simulating_both(tmp_path):
    out = tmp_path / "params.pt"
    mp.start_processes(
        _steps_worker,
        args=(str(tmp_path / "store"), str(out)),
        nprocs=WORKERS,
        join=True,
        start_method="spawn",
    )
    assert not multiprocessing.active_children()
    results = torch.load(out)
    for bases, combine in MODES:
        params, nbytes = results[bases]
        expected = _simulate(bases, combine)
        assert (params - expected).abs().max() <= 1e-6, bases
        assert not torch.equal(params, _flat(_model())), bases
        per_worker = math.ceil(DIM / WORKERS) if bases == "split" else DIM
        assert nbytes == WORKERS * per_worker * 4, bases
    assert results["worker"][1] == 2 * DIM * 4


def test_one_worker_is_plain_rbd():
    group = Workers(0, 1, torch.device("cpu"))
    x, y = _data()
    a, b = _model(), _model()
    opt_a = DistributedRBD(a.parameters(), group, lr=LR, dim=DIM, seed=SEED)
    opt_b = build_optimizer("rbd", b.parameters(), lr=LR, dim=DIM, seed=SEED)
    opt_b.threads = opt_a.threads
    for t in range(STEPS):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(
                model(x[t * BATCH : (t + 1) * BATCH]), y[t * BATCH : (t + 1) * BATCH]
            ).backward()
            opt.step()
    assert torch.equal(_flat(a), _flat(b))
    assert opt_a.bytes_per_step == DIM * 4


SMALL = ["--model", "fc", "--dataset", "mnist5k", "--train-limit", "512", "--threads", "1"]
RUN = ["train", "--method", "rbd", "--lr", "4", "--dim", "250", "--epochs", "2", *SMALL]


def test_two_workers_reach_the_accuracy_band_of_one(tmp_path):
    one_cfg = dict(method="rbd", model="fc", dataset="mnist5k", dim=250, distribution="gaussian",
                   lr=4.0, epochs=2, seed=0, train_limit=512, threads=1)  # fmt: skip
    train(TrainConfig(**one_cfg), tmp_path / "one")
    run_rbd(*RUN, "--workers", "2", "--out", tmp_path / "two", check=True)
    one = pd.read_csv(tmp_path / "one" / "metrics.csv")
    two = pd.read_csv(tmp_path / "two" / "metrics.csv")
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert list(two["epoch"]) == [1, 2] and record["status"] == "done"
    assert record["workers"] == 2 and record["config"]["workers"] == 2
    assert one["val_acc"].iloc[-1] > 30 and two["val_acc"].iloc[-1] > 30  # chance is 10
    assert abs(two["val_acc"].iloc[-1] - one["val_acc"].iloc[-1]) < 5
    assert (two["bytes_per_step"] == 2 * 250 * 4).all()
    assert (two["sgd_bytes_per_step"] == 101_770 * 4).all()
    assert (two[list(STEP_TIME_COLUMNS)] >= 0).all().all()
    assert not (tmp_path / "two" / "checkpoint.pt").exists()


def _config(**settings) -> TrainConfig:
    base = dict(method="rbd", model="fc", dataset="mnist5k", dim=50, distribution="gaussian",
                lr=4.0, epochs=2, seed=3, train_limit=192, threads=1, checkpoint_minutes=1e-9,
                workers=2)  # fmt: skip
    return TrainConfig(**(base | settings))


def _interrupted(rank: int, cfg: TrainConfig, out: str, store: str) -> None:
    """A worker whose 5th step (second epoch) raises, on every worker alike."""
    real, calls = steps_module.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 global batches per epoch: second epoch, second batch
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    steps_module.train_step = step
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        train(cfg, out, workers=Workers(rank, 2, torch.device("cpu")))
    finally:
        dist.destroy_process_group()


def _metrics(run_dir):
    drop = list(EPOCH_TIME_COLUMNS) + list(STEP_TIME_COLUMNS)
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=drop)


def test_two_workers_resume_mid_epoch_to_the_same_metrics(tmp_path):
    cfg = _config()
    launch(cfg, tmp_path / "whole")
    with pytest.raises(mp.ProcessRaisedException, match="interrupted"):
        mp.start_processes(
            _interrupted,
            args=(cfg, str(tmp_path / "cut"), str(tmp_path / "store")),
            nprocs=2,
            join=True,
            start_method="spawn",
        )
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["next_batch"] == 1
    record = launch(cfg, tmp_path / "cut")
    assert record["resumes"] == 1 and record["status"] == "done"
    assert not multiprocessing.active_children()
    pd.testing.assert_frame_equal(
        _metrics(tmp_path / "cut"), _metrics(tmp_path / "whole"), check_exact=True
    )


LAUNCH_AFTER_OPENMP = """
import sys, torch
from rbd.train.launch import launch
from rbd.spec import TrainConfig
torch.set_num_threads(2)
torch.ones(512, 512) @ torch.ones(512, 512)  # the parent's OpenMP threads exist
cfg = TrainConfig(method="rbd", model="fc", dataset="mnist5k", dim=10, distribution="gaussian",
                  lr=4.0, epochs=1, seed=0, train_limit=64, threads=THREADS, workers=2)
print(launch(cfg, sys.argv[1])["status"])
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_workers_start_after_the_parent_ran_openmp_threads(tmp_path, threads):
    """Local workers with one thread each are forked (no second import of PyTorch), with
    more threads spawned: a forked child of a process that ran OpenMP threads hangs in
    its first multi-threaded op (seen with fork for threads = 2)."""
    script = LAUNCH_AFTER_OPENMP.replace("THREADS", str(threads))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its hung workers
        proc.communicate()
        pytest.fail(f"workers with {threads} thread(s) did not finish in 120 s (hung?)")
    assert proc.returncode == 0 and out.split()[-1] == "done", err[-2000:]


def test_cli_rejects_workers_for_other_methods(tmp_path):
    proc = run_rbd(*["train", "--method", "fpd", "--lr", "4", *SMALL], "--workers", "2",
                   "--out", tmp_path / "x")  # fmt: skip
    assert proc.returncode != 0 and "--workers" in proc.stderr
