"""Distributed RBD: time per step (compute, regeneration, communication) and bytes per step.

Runs W = 1 in this process and W = 2 as two spawned gloo workers on this
machine (one thread each), fc on 28x28x1 (D = 101,770), batch 32 per worker,
synthetic images (no data set needed). Also times one all_gather of d floats
and one all_reduce of D floats (what data-parallel SGD would send), and fits
the model

    t_step(W) = t_compute + r(W) * t_regen + t_comm(W)

where t_regen is the time to regenerate one worker's d directions and apply
Phi^T c, and r(W) the number of other workers' direction sets regenerated
per step: W - 1 with own bases, 1 with shared bases (the summed
coordinates, once), (W - 1) / W with split dimensions. Usage:

    .venv/bin/python benchmarks/bench_distributed.py [--steps 20] [--dim 250] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rbd.optim.distributed import DistributedRBD, Workers  # noqa: E402
from rbd.train.models import build_model  # noqa: E402

BATCH = 32
MODES = ("worker", "shared", "split")


def _run(group: Workers, bases: str, dim: int, steps: int, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    model = build_model("fc", (1, 28, 28))
    opt = DistributedRBD(model.parameters(), group, sharing=bases, lr=0.1, dim=dim, seed=0)
    gen = torch.Generator().manual_seed(group.rank)
    x = torch.rand(BATCH, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    totals = {"step_s": 0.0, "comm_s": 0.0, "regen_s": 0.0, "fb_s": 0.0}
    for i in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        backward = time.perf_counter()
        opt.step()
        if i >= warmup:
            totals["fb_s"] += backward - start
            totals["step_s"] += time.perf_counter() - start
            totals["comm_s"] += opt.stats["comm_s"]
            totals["regen_s"] += opt.stats["regen_s"]
    row = {k: v / steps for k, v in totals.items()}
    row["compute_s"] = row["step_s"] - row["comm_s"] - row["regen_s"]
    D = sum(p.numel() for p in model.parameters())
    row |= {"sharing": bases, "workers": group.size, "bytes_per_step": opt.bytes_per_step,
            "sgd_bytes_per_step": 4 * D, "num_params": D, "dim": dim}  # fmt: skip
    return row


def _collectives(dim: int, size: int, repeats: int = 50) -> dict:
    """Seconds per all_gather of d floats and per all_reduce of D floats."""
    out = {}
    for name, numel, fn in (
        ("all_gather_d_s", dim, lambda t: dist.all_gather([torch.empty_like(t) for _ in "ab"], t)),
        ("all_reduce_D_s", size, dist.all_reduce),
    ):
        t = torch.ones(numel)
        for _ in range(5):
            fn(t)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            fn(t)
        out[name] = (time.perf_counter() - start) / repeats
    return out


def _worker(rank: int, store: str, dim: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        group = Workers(rank, 2, torch.device("cpu"))
        rows = [_run(group, bases, dim, steps) for bases in MODES]
        coll = _collectives(dim, rows[0]["num_params"])
        if rank == 0:
            Path(out).write_text(json.dumps({"rows": rows, "collectives": coll}))
    finally:
        dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dim", type=int, default=250)
    parser.add_argument("--predict", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    one = _run(Workers(0, 1, torch.device("cpu")), "worker", args.dim, args.steps)
    tmp = tempfile.mkdtemp(prefix="rbd-bench-")
    try:
        result = os.path.join(tmp, "result.json")
        mp.start_processes(
            _worker,
            args=(os.path.join(tmp, "store"), args.dim, args.steps, result),
            nprocs=2,
            join=True,
            start_method="spawn",
        )
        two = json.loads(Path(result).read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [one, *two["rows"]]
    coll = two["collectives"]

    print(f"fc, D = {one['num_params']:,}, d = {args.dim}, batch {BATCH} per worker, "
          f"1 thread per worker, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print()
    print("| W | bases | ms/step | fwd+bwd | compute | regen | comm | img/s | bytes | SGD bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['sharing']} | {1e3 * r['step_s']:.1f} | "
            f"{1e3 * r['fb_s']:.1f} | "
            f"{1e3 * r['compute_s']:.1f} | {1e3 * r['regen_s']:.1f} | {1e3 * r['comm_s']:.2f} | "
            f"{r['workers'] * BATCH / r['step_s']:.0f} | {r['bytes_per_step']:,} | "
            f"{r['sgd_bytes_per_step']:,} |"
        )
    print()
    gather_ms, reduce_ms = 1e3 * coll["all_gather_d_s"], 1e3 * coll["all_reduce_D_s"]
    print(f"all_gather of d = {args.dim} floats (2 workers): {gather_ms:.3f} ms; "
          f"all_reduce of D floats: {reduce_ms:.3f} ms")  # fmt: skip

    # Model (each worker on its own cores, as on a cluster): a step is the
    # forward/backward and the directions the worker draws (own projection
    # plus regeneration), both timed at W = 1, and the all_gather (latency
    # per doubling, plus bytes at the bandwidth a ring all-reduce of D
    # floats shows, 2 x D x 4 bytes sent).
    t_fb = one["fb_s"]
    t_gen = (one["step_s"] - t_fb - one["comm_s"]) / args.dim
    latency = coll["all_gather_d_s"]
    bandwidth = 2 * 4 * one["num_params"] / coll["all_reduce_D_s"]
    drawn = {"worker": lambda w: w * args.dim, "shared": lambda w: (2 if w > 1 else 1) * args.dim,
             "split": lambda w: args.dim}  # fmt: skip
    print()
    print(f"Model: forward/backward {1e3 * t_fb:.1f} ms, {1e6 * t_gen:.1f} us per direction "
          f"drawn, latency {1e3 * latency:.3f} ms, {bandwidth / 1e9:.2f} GB/s; "
          "one core per worker:")  # fmt: skip
    print(
        "| W | bases | directions drawn | ms/step | images/s | speed-up | bytes/step | SGD bytes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = BATCH / one["step_s"]
    predictions = []
    for bases in MODES:
        for w in args.predict:
            per_worker = math.ceil(args.dim / w) if bases == "split" else args.dim
            nbytes = w * per_worker * 4
            comm = 0.0 if w == 1 else latency * math.ceil(math.log2(w)) + nbytes / bandwidth
            t = t_fb + drawn[bases](w) * t_gen + comm
            ips = w * BATCH / t
            predictions.append({"workers": w, "bases": bases, "step_s": t, "images_per_s": ips})
            print(f"| {w} | {bases} | {drawn[bases](w)} | {1e3 * t:.1f} | {ips:.0f} | "
                  f"{ips / base:.1f} | {nbytes:,} | {4 * one['num_params']:,} |")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"measured": rows, "collectives": coll, "predicted": predictions}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
