"""Per-step time of the random-bases engine against a naive version and SGD.

Prints a table of the median ms per optimiser step (gradient given, the
forward/backward pass not timed) for SGD, a naive RBD that materialises the
d x D Gaussian matrix with torch.randn and does two products, and the
engine's RBD with each distribution; all measured in one run, repeats
interleaved so that a busy machine slows every row alike. "cpu ms" is the
process CPU time of a step over all threads: on a shared machine it shows
the work, where wall time also shows how many cores were free. With --memory it
also measures the peak resident memory that one RBD step at D = 10^6,
d = 1000 adds over an SGD step (each in a fresh subprocess).

    .venv/bin/python benchmarks/bench_engine.py [--model fc] [--dim 250] [--memory]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from rbd.models import build_model, count_params
from rbd.optim import RBD
from rbd.projection import DISTRIBUTIONS


class NaiveRBD(torch.optim.Optimizer):
    """The straightforward RBD step: materialise Phi = randn(d, D), two products.

    ``scale_matrix=False`` folds 1/sqrt(D) into the products (the faster
    baseline, used for the ratios); ``True`` divides the matrix itself.
    """

    def __init__(self, params, lr: float, dim: int, scale_matrix: bool = False):
        super().__init__(params, dict(lr=lr))
        self.dim = dim
        self.scale_matrix = scale_matrix

    @torch.no_grad()
    def step(self):
        params = [p for g in self.param_groups for p in g["params"]]
        g = torch.cat([p.grad.reshape(-1) for p in params])
        scale = 1 / math.sqrt(g.numel())
        phi = torch.randn(self.dim, g.numel())
        if self.scale_matrix:
            update = (phi := phi * scale).t() @ (phi @ g)
        else:
            update = phi.t() @ ((phi @ g) * scale) * scale
        for p, u in zip(params, update.split([p.numel() for p in params]), strict=True):
            p.add_(u.view_as(p), alpha=-self.param_groups[0]["lr"])


def time_steps(optimisers: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU (all threads) ms per step, repeats interleaved."""
    times = {name: [] for name in optimisers}
    cpu = {name: [] for name in optimisers}
    for opt in optimisers.values():
        opt.step()  # warm-up: allocations, thread pools
    for _ in range(repeats):
        for name, opt in optimisers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            opt.step()
            times[name].append(1e3 * (time.perf_counter() - start))
            cpu[name].append(1e3 * (time.process_time() - start_cpu))
    return {name: (statistics.median(times[name]), statistics.median(cpu[name])) for name in times}


def step_times(model_name: str, dim: int, repeats: int) -> None:
    shape = (1, 28, 28)
    model = build_model(model_name, shape)
    size = count_params(model)
    x, y = torch.rand(32, *shape), torch.randint(0, 10, (32,))
    nn.functional.cross_entropy(model(x), y).backward()
    # Tiny rates: the gradients stay as computed, the parameters barely move.
    optimisers = {
        "sgd": torch.optim.SGD(model.parameters(), lr=1e-9),
        "naive gaussian": NaiveRBD(model.parameters(), lr=1e-9, dim=dim),
        "naive, Phi/sqrt(D)": NaiveRBD(model.parameters(), lr=1e-9, dim=dim, scale_matrix=True),
    }
    for dist in DISTRIBUTIONS:
        optimisers[dist] = RBD(model.parameters(), lr=1e-9, dim=dim, distribution=dist)
    medians = time_steps(optimisers, repeats)
    naive = medians["naive gaussian"][0]
    load = os.getloadavg()[0]
    print(
        f"model {model_name} D={size} d={dim} threads={torch.get_num_threads()} "
        f"repeats={repeats} device=cpu ({torch.backends.cpu.get_cpu_capability()}) "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'step':<20} {'ms/step':>9} {'naive/x':>9} {'x/sgd':>9} {'cpu ms':>9}")
    sgd = medians["sgd"][0]
    for name, (ms, cpu_ms) in medians.items():
        print(f"{name:<20} {ms:9.2f} {naive / ms:9.2f} {ms / sgd:9.1f} {cpu_ms:9.1f}")


def peak_rss_child(method: str, size: int, dim: int) -> None:
    """Runs in a subprocess: one step at D = size; prints peak RSS growth in MB."""
    param = nn.Parameter(torch.randn(size))
    param.grad = torch.randn(size)
    opt = (
        torch.optim.SGD([param], lr=0.1)
        if method == "sgd"
        else RBD([param], lr=0.1, dim=dim, distribution=method)
    )
    # Reset the kernel's peak-RSS mark so that only the step's peak counts.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _vm_hwm_kib()
    opt.step()
    print((_vm_hwm_kib() - before) / 1024)


def _vm_hwm_kib() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: after exec that also
    holds the parent's RSS at fork time, which can hide the step's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory(size: int, dim: int) -> None:
    growth = {}
    for method in ("sgd", "gaussian", "rademacher"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rss-child",
                method,
                "--size",
                str(size),
                "--dim",
                str(dim),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        growth[method] = float(out.stdout.split()[-1])
    print(f"\npeak RSS growth of one step, D={size} d={dim} (MB; fresh process each)")
    for method, mb in growth.items():
        extra = "" if method == "sgd" else f"  (+{mb - growth['sgd']:.1f} MB over sgd)"
        print(f"{method:<12} {mb:8.1f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fc", choices=["fc", "cnn"])
    parser.add_argument("--dim", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory", action="store_true", help="also the D=1e6, d=1000 memory")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        peak_rss_child(args.rss_child, args.size, args.dim)
        return
    step_times(args.model, args.dim, args.repeats)
    if args.memory:
        memory(args.size, 1000)


if __name__ == "__main__":
    main()
