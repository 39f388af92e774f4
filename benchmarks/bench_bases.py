"""Per-step time of structured random bases (srht, fastfood) against Gaussian RBD.

Prints the median ms per optimiser step (gradient given, the forward and
backward pass not timed) at d = 250 on fc (D = 101,770) for SGD, the naive
Gaussian RBD step (``randn(d, D)`` materialised, two products; the
reference of the ratios), the engine's dense chunked gaussian and
rademacher, and the structured srht and fastfood; all from one run, repeats
interleaved (see bench_engine.py), with the acceptance check: srht and
fastfood at least 25x faster than naive Gaussian.

With --forward it also compares RBD's coordinates by forward-mode
differentiation (``derivatives="forward"``: d jvps, no backward pass) with
the default (one forward and backward pass, then c = Phi g): ms per full
training step (loss, gradient or jvps, update) and the peak resident memory
the step adds (fresh subprocess each, VmHWM).

    .venv/bin/python benchmarks/bench_bases.py [--dim 250] [--repeats 15] [--forward]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch
from bench_engine import NaiveRBD, _vm_hwm_kib, time_steps
from torch import nn

from rbd.optim import RBD, module_loss
from rbd.train.models import build_model, count_params

ACCEPT = 25.0
SHAPE = (1, 28, 28)


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(32, *SHAPE, generator=gen), torch.randint(0, 10, (32,), generator=gen)


def step_table(model_name: str, dim: int, repeats: int) -> None:
    model = build_model(model_name, SHAPE)
    size = count_params(model)
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    lr = 1e-9  # the gradients stay as computed, the parameters barely move
    optimisers = {
        "sgd": torch.optim.SGD(model.parameters(), lr=lr),
        "naive gaussian": NaiveRBD(model.parameters(), lr=lr, dim=dim),
    }
    for dist in ("gaussian", "rademacher", "srht", "fastfood"):
        optimisers[dist] = RBD(model.parameters(), lr=lr, dim=dim, distribution=dist)
    medians = time_steps(optimisers, repeats)
    naive, sgd = medians["naive gaussian"][0], medians["sgd"][0]
    print(
        f"model {model_name} D={size} d={dim} threads={torch.get_num_threads()} "
        f"repeats={repeats} device=cpu ({torch.backends.cpu.get_cpu_capability()}) "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'step':<16} {'ms/step':>9} {'naive/x':>9} {'x/sgd':>9} {'cpu ms':>9}")
    for name, (ms, cpu_ms) in medians.items():
        print(f"{name:<16} {ms:9.2f} {naive / ms:9.1f} {ms / sgd:9.1f} {cpu_ms:9.1f}")
    for name in ("srht", "fastfood"):
        ratio = naive / medians[name][0]
        verdict = "pass" if ratio >= ACCEPT else "FAIL"
        print(
            f"acceptance: {name} {ratio:.1f}x faster than naive gaussian "
            f"(>= {ACCEPT:g}x): {verdict}"
        )


def _train_step(model, opt, mode: str, x, y) -> None:
    if mode == "forward":
        opt.step(module_loss(model, lambda out: nn.functional.cross_entropy(out, y), x))
        return
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


class _Step:
    """A full training step (loss, gradient or jvps, update) as ``step()``."""

    def __init__(self, model_name, dim, dist, mode):
        torch.manual_seed(0)
        self.model = build_model(model_name, SHAPE)
        self.x, self.y = batch()
        self.mode = mode
        lr = 1e-9
        if mode == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        else:
            coords = "forward" if mode == "forward" else "backward"
            self.opt = RBD(
                self.model.parameters(), lr=lr, dim=dim, distribution=dist, coordinates=coords
            )

    def step(self):
        _train_step(self.model, self.opt, self.mode, self.x, self.y)


MODES = {
    "sgd (fwd+bwd)": ("sgd", "gaussian"),
    "gaussian, backward": ("backward", "gaussian"),
    "gaussian, forward": ("forward", "gaussian"),
    "srht, backward": ("backward", "srht"),
    "srht, forward": ("forward", "srht"),
}


def forward_table(model_name: str, dim: int, repeats: int) -> None:
    steps = {name: _Step(model_name, dim, dist, mode) for name, (mode, dist) in MODES.items()}
    medians = time_steps(steps, repeats)
    growth = {name: _peak_growth(model_name, dim, *MODES[name]) for name in MODES}
    base = medians["gaussian, backward"][0]
    print(f"\nfull training step, {model_name} d={dim}, batch 32 (loss + gradient/jvps + update)")
    print(f"{'step':<20} {'ms/step':>9} {'x/default':>10} {'cpu ms':>9} {'peak +MB':>9}")
    for name, (ms, cpu_ms) in medians.items():
        print(f"{name:<20} {ms:9.1f} {ms / base:10.1f} {cpu_ms:9.1f} {growth[name]:9.1f}")


def _peak_growth(model_name: str, dim: int, mode: str, dist: str) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--rss-child",
            mode,
            dist,
            "--model",
            model_name,
            "--dim",
            str(dim),
        ],  # fmt: skip
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.split()[-1])


def peak_rss_child(model_name: str, dim: int, mode: str, dist: str) -> None:
    """Runs in a subprocess: one warm-up step, then the peak RSS growth of one step (MB)."""
    step = _Step(model_name, dim, dist, mode)
    step.step()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark: only this step's peak counts
    before = _vm_hwm_kib()
    step.step()
    print((_vm_hwm_kib() - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fc", choices=["fc", "cnn"])
    parser.add_argument("--dim", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--forward", action="store_true", help="also forward-mode coordinates")
    parser.add_argument("--rss-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        peak_rss_child(args.model, args.dim, *args.rss_child)
        return
    step_table(args.model, args.dim, args.repeats)
    if args.forward:
        forward_table(args.model, args.dim, max(3, args.repeats // 3))


if __name__ == "__main__":
    main()
