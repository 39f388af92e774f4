"""The engine on a device against the CPU, and the host facts a report of it needs.

``benchmarks/gpu_check.py`` runs these on a GPU. The reference is always the CPU with
the default engine (the compiled kernels where they build); the device side draws on
the device, and on a CPU by the eager torch ops (:func:`device_path`), the ops every
other device runs, so that a CPU run compares two paths too. What is promised
(docs/CONTRACTS.md): dense directions bit for bit on every device and path; structured
directions, and the products ``c = Phi g`` and ``Phi^T c``, to float rounding; ``expand``
rebuilds ``project``'s update bit for bit on any one device.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rbd.bases import native
from rbd.bases.distributions import STRUCTURED
from rbd.bases.projection import expand, generate_directions, project
from rbd.spec import BASES_VERSION

# Float rounding, for what may differ by it: structured rows, their largest difference
# relative to the reference's largest value (transforms of O(log N) additions);
# products, the norm of the difference relative to the reference's norm, 4 u sqrt(D)
# (u = 2^-24: a random walk of D float32 roundings, four standard deviations; the
# summation order of D products differs between the kernels, torch's and a GPU's).
ROW_ROUNDING = 1e-5
UNIT_ROUNDOFF = 2.0**-24


def product_tolerance(size: int) -> float:
    return 4 * UNIT_ROUNDOFF * math.sqrt(max(size, 1))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; else what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return flags


def vector_width(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The widest vector unit the engine's kernels can use: AVX-512, AVX2, AVX, SSE (x86),
    SVE or NEON (Arm), else "none". AVX-512 and AVX2 hosts differ about 3x in the
    engine's speed, so every number a report gives names it."""
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse2", "SSE")):
        if flag in flags:
            return name
    if "sve" in flags:
        return "SVE"
    if {"asimd", "neon"} & flags or machine in ("aarch64", "arm64"):
        return "NEON"
    return "none"


def host_facts() -> dict:
    """Where the numbers came from: CPU model and vector width, cores, library versions."""
    return {
        "cpu_model": cpu_model(),
        "vector_width": vector_width(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "bases_version": BASES_VERSION,
        "kernels": native.kernel_width(),  # what the compiled kernels were built for
    }


def device_facts(device: torch.device) -> dict:
    """The device's name, and for a GPU its compute capability, memory and count."""
    if device.type != "cuda":
        return {"device": str(device), "name": cpu_model()}
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "device": f"cuda:{index}",
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "count": torch.cuda.device_count(),
    }


@contextlib.contextmanager
def device_path(device: torch.device):
    """Draw the way ``device`` does: on a CPU by the eager torch ops (``RBD_ENGINE=eager``),
    not the compiled kernels that draw the reference."""
    if device.type != "cpu":
        yield
        return
    old = os.environ.get(native.ENGINE_ENV)
    os.environ[native.ENGINE_ENV] = "eager"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(native.ENGINE_ENV, None)
        else:
            os.environ[native.ENGINE_ENV] = old


def _on_host(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def mismatched_values(reference: torch.Tensor, candidate: torch.Tensor) -> int:
    """How many values differ in their bits (so -0.0 against 0.0 and NaN payloads count)."""
    a, b = _on_host(reference), _on_host(candidate)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(
            f"cannot compare {tuple(a.shape)} {a.dtype} with {tuple(b.shape)} {b.dtype}"
        )
    if a.numel() == 0:
        return 0
    width = a.element_size()
    a_bytes, b_bytes = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    return int((a_bytes != b_bytes).view(-1, width).any(dim=1).sum())


def max_abs_difference(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    a, b = _on_host(reference).double(), _on_host(candidate).double()
    return float((a - b).abs().max()) if a.numel() else 0.0


def relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """``|candidate - reference| / |reference|`` (2-norms, float64); 0 where both are 0."""
    a, b = _on_host(reference).double(), _on_host(candidate).double()
    diff, norm = float((a - b).norm()), float(a.norm())
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


@dataclass
class Comparison:
    """One comparison of a device's values with the reference's.

    ``rule`` "bits": every value the same bits (``mismatched == 0``). "rounding":
    ``error`` (rows: the largest difference over the reference's largest value;
    products: the relative 2-norm error) at most ``tolerance``.
    """

    what: str  # directions, coords, update, expand
    distribution: str
    size: int
    rows: int
    rule: str
    mismatched: int
    max_abs: float
    error: float
    tolerance: float
    reference: str  # what computed each side
    candidate: str

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 if self.rule == "bits" else self.error <= self.tolerance

    def as_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def compare(
    what: str,
    distribution: str,
    reference: torch.Tensor,
    candidate: torch.Tensor,
    rule: str,
    *,
    rows: int,
    size: int,
    where: tuple[str, str],
) -> Comparison:
    """Compare ``candidate`` with ``reference`` by ``rule``: ``rows`` directions of
    ``size`` values, or products of them (``size`` is D, whose sums set the rounding)."""
    if rule not in ("bits", "rounding"):
        raise ValueError(f"rule {rule!r}: use 'bits' or 'rounding'")
    max_abs = max_abs_difference(reference, candidate)
    if what == "directions":
        scale = float(_on_host(reference).abs().max()) if reference.numel() else 0.0
        error = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
        tolerance = ROW_ROUNDING
    else:
        error, tolerance = relative_error(reference, candidate), product_tolerance(size)
    return Comparison(
        what=what,
        distribution=distribution,
        size=size,
        rows=rows,
        rule=rule,
        mismatched=mismatched_values(reference, candidate),
        max_abs=max_abs,
        error=error,
        tolerance=0.0 if rule == "bits" else tolerance,
        reference=where[0],
        candidate=where[1],
    )


def _sides(device: torch.device) -> tuple[str, str]:
    """What computed the reference and the device's values, in words."""
    engine = "compiled kernels" if native.library() is not None else "eager torch ops"
    return f"cpu ({engine})", f"{device} (eager torch ops)"


def compare_directions(distribution: str, seeds, size: int, device) -> Comparison:
    """``generate_directions(seeds, size)`` on the CPU and on ``device``: dense rows bit for
    bit, structured rows to rounding."""
    device = torch.device(device)
    reference = generate_directions(seeds, size, distribution)
    with device_path(device):
        drawn = generate_directions(seeds, size, distribution, device=device)
    rule = "rounding" if distribution in STRUCTURED else "bits"
    return compare(
        "directions", distribution, reference, drawn, rule,
        rows=len(seeds), size=size, where=_sides(device),
    )  # fmt: skip


def compare_products(
    distribution: str, seeds, grad: torch.Tensor, device, *, normalize: bool = True
) -> list[Comparison]:
    """``project(grad, seeds)`` on the CPU and on ``device`` (coordinates and update, to
    rounding), and ``expand`` of the device's coordinates against the device's update
    (bits)."""
    device = torch.device(device)
    grad = grad.detach().to("cpu", torch.float32)
    coords, update = project(grad, seeds, distribution, normalize=normalize)
    with device_path(device):
        on_coords, on_update = project(grad.to(device), seeds, distribution, normalize=normalize)
        rebuilt = expand(on_coords, seeds, grad.numel(), distribution, normalize=normalize)
    cpu, dev = _sides(device)
    shape = dict(rows=len(seeds), size=grad.numel())
    return [
        compare("coords", distribution, coords, on_coords, "rounding", where=(cpu, dev), **shape),
        compare("update", distribution, update, on_update, "rounding", where=(cpu, dev), **shape),
        compare("expand", distribution, on_update, rebuilt, "bits", where=(dev, dev), **shape),
    ]
