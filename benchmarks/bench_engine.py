"""Per-step time of the random-bases engine against the C floor, a naive version and SGD.

Prints a table of the median ms per optimiser step (gradient given, the
forward/backward pass not timed) for SGD, a naive RBD that materialises the
d x D Gaussian matrix with torch.randn and does two products, and the
engine's RBD with each distribution (compiled kernels, and the Gaussian on
the eager torch path, ``RBD_ENGINE=eager``); beside them the plain-C floor
(``benchmarks/floor.c``, built with the system compiler when one is present: d
counter-based Gaussian rows, fused products, OpenMP) at the same
D, d and thread count, and each step's ratio to it. All measured in one run,
rounds interleaved so that a busy machine slows every row alike; a round
takes each step's best of ``--best`` tries, the table the median over
rounds. "cpu ms" is the process CPU time of a step over all threads: on a
shared machine it shows the work, where wall time also shows how many cores
were free. With --memory it also measures the peak resident memory that one
RBD step at D = 10^6, d = 1000 adds over an SGD step (each in a fresh
subprocess). With a GPU (``--device cuda``, the default where one is
present) it times the steps there too, each against the GPU SGD step.

    .venv/bin/python benchmarks/bench_engine.py [--model fc] [--dim 250] [--threads 2] [--memory]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from rbd.bases import DISTRIBUTIONS, native
from rbd.optim import RBD
from rbd.train.models import build_model, count_params


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


FLOOR_SOURCE = Path(__file__).resolve().parent / "floor.c"


@contextlib.contextmanager
def engine(choice: str | None):
    """Run with ``RBD_ENGINE=choice`` (None: as the environment has it)."""
    old = os.environ.get("RBD_ENGINE")
    if choice is not None:
        os.environ["RBD_ENGINE"] = choice
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RBD_ENGINE", None)
        else:
            os.environ["RBD_ENGINE"] = old


class Floor:
    """The C floor as a step: one subprocess run of ``floor D d best`` (its best of
    ``best`` passes) per round, at this process's thread count."""

    def __init__(self, binary: Path, size: int, dim: int, best: int, threads: int):
        self.cmd = [str(binary), str(size), str(dim), str(best)]
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads))

    def best_ms(self) -> float:
        out = subprocess.run(self.cmd, env=self.env, capture_output=True, text=True, check=True)
        return float(re.search(r"best ([0-9.]+) ms", out.stdout).group(1))


def build_floor(source: Path, workdir: Path) -> tuple[Path | None, str]:
    """The floor's binary, or None and why not."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not source.exists():
        return None, f"{source} not found"
    if compiler is None:
        return None, "no C compiler"
    binary = workdir / "floor"
    cmd = [compiler, "-O3", "-march=native", "-fopenmp", str(source), "-o", str(binary), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"{' '.join(cmd)} failed: {done.stderr.strip()[:300]}"
    return binary, " ".join(cmd)


def time_steps(steps: dict, rounds: int, best: int, sync) -> dict[str, tuple[float, float]]:
    """Median over rounds of each step's best wall ms of ``best`` tries (and its CPU ms,
    all threads); steps are ``(optimiser, engine choice)`` or a ``Floor``."""
    times = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for step in steps.values():
        if not isinstance(step, Floor):
            with engine(step[1]):
                step[0].step()  # warm-up: allocations, thread pools, the kernels' build
    for _ in range(rounds):
        for name, step in steps.items():
            if isinstance(step, Floor):
                times[name].append(step.best_ms())
                cpu[name].append(float("nan"))
                continue
            opt, choice = step
            tries = []
            with engine(choice):
                for _ in range(best):
                    sync()
                    start, start_cpu = time.perf_counter(), time.process_time()
                    opt.step()
                    sync()
                    tries.append((time.perf_counter() - start, time.process_time() - start_cpu))
            wall, proc = min(tries)
            times[name].append(1e3 * wall)
            cpu[name].append(1e3 * proc)
    return {name: (statistics.median(times[name]), statistics.median(cpu[name])) for name in times}


def step_times(
    model_name: str, dim: int, rounds: int, best: int, device: torch.device, floor_source: Path
) -> None:
    shape = (1, 28, 28)
    model = build_model(model_name, shape).to(device)
    size = count_params(model)
    x, y = torch.rand(32, *shape, device=device), torch.randint(0, 10, (32,), device=device)
    nn.functional.cross_entropy(model(x), y).backward()
    # Tiny rates: the gradients stay as computed, the parameters barely move.
    params = list(model.parameters())
    steps: dict = {"sgd": (torch.optim.SGD(params, lr=1e-9), None)}
    if device.type == "cpu":
        steps["naive gaussian"] = (NaiveRBD(params, lr=1e-9, dim=dim), None)
        steps["naive, Phi/sqrt(D)"] = (NaiveRBD(params, lr=1e-9, dim=dim, scale_matrix=True), None)
    for dist in DISTRIBUTIONS:
        steps[dist] = (RBD(params, lr=1e-9, dim=dim, distribution=dist), None)
    steps["gaussian (eager)"] = (RBD(params, lr=1e-9, dim=dim), "eager")
    with tempfile.TemporaryDirectory() as tmp:
        floor, how = (None, "not on this device")
        if device.type == "cpu":
            floor, how = build_floor(floor_source, Path(tmp))
        if floor is not None:
            steps["floor.c gaussian"] = Floor(floor, size, dim, best, torch.get_num_threads())
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        medians = time_steps(steps, rounds, best, sync)
    load = os.getloadavg()[0]
    capability = torch.backends.cpu.get_cpu_capability()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({capability})"
    print(
        f"model {model_name} D={size} d={dim} threads={torch.get_num_threads()} "
        f"rounds={rounds} best-of={best} device={where} "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    print(f"engine kernels: {native.kernel_width()}")
    print(f"floor: {how}")
    base = medians.get("floor.c gaussian", (float("nan"), 0))[0]
    print(f"{'step':<20} {'ms/step':>9} {'x/floor':>9} {'x/sgd':>9} {'cpu ms':>9}")
    sgd = medians["sgd"][0]
    for name, (ms, cpu_ms) in medians.items():
        print(f"{name:<20} {ms:9.2f} {ms / base:9.2f} {ms / sgd:9.1f} {cpu_ms:9.1f}")


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
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--best", type=int, default=3, help="tries per step per round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: both where present)")
    parser.add_argument("--floor", type=Path, default=FLOOR_SOURCE, help="floor.c to build")
    parser.add_argument("--memory", action="store_true", help="also the D=1e6, d=1000 memory")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        peak_rss_child(args.rss_child, args.size, args.dim)
        return
    devices = [args.device] if args.device else ["cpu"] + ["cuda"] * torch.cuda.is_available()
    for name in devices:
        step_times(args.model, args.dim, args.rounds, args.best, torch.device(name), args.floor)
    if args.memory:
        memory(args.size, 1000)


if __name__ == "__main__":
    main()
