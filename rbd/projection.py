"""The random-bases engine: seeded directions and the one-pass projection.

A direction is a pure function of a 63-bit seed, itself a pure function of
(run seed, step, compartment, worker, direction index). Each direction gets
its own freshly seeded generator, so a direction does not depend on how many
directions are drawn together (the chunk size), on thread count, or on which
worker draws it. The only random primitive is ``Tensor.random_`` on int64
tensors (full 64-bit range), whose bits do not depend on the CPU's vector
instruction set (``torch.randn``'s do); every distribution is built from
those bits with exact integer and float operations.

Layout of one direction of length D: a row of W = 64 * ceil(D / 64) values
of which the first D are used.

- gaussian: W / 4 int64 draws, seen as W little-endian 16-bit words; word t
  indexes value t in a table of the 2^16 equiprobable normal quantiles
  Phi^-1((u + 1/2) / 2^16), rescaled to unit variance. A table look-up costs
  a third of Box-Muller's log, cos and sin (which made the Gaussian step
  barely faster than a plain ``torch.randn``); the price is a distribution
  quantised to 65,536 levels and truncated at 4.42 sigma (mass beyond it:
  1e-5), which changes no moment that random bases depend on.
- uniform: W / 2 int64 draws, one 32-bit word (23 bits used) per value.
- rademacher, bernoulli-official: W / 64 int64 draws, one bit per value
  (bit t of int32 word k gives value 32 k + t).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue

import torch

DISTRIBUTIONS = ("gaussian", "uniform", "rademacher", "bernoulli-official")

# Bytes of directions generated at once per worker: one core's L2 cache
# (2 MiB here), so a chunk is still cached when it is used for c = Phi g and
# Phi^T c. Smaller chunks lose more to per-op overhead (1 MiB was ~10%
# slower at D = 101,770).
L2_BYTES = 2 << 20

_MASK64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT32_MIN = -(1 << 31)
_MANTISSA = 0x007FFFFF
_ONE = 0x3F800000  # float32 bit pattern of 1.0


def _splitmix64(x: int) -> int:
    """The splitmix64 step and finaliser: a bijection on 64-bit ints."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(parts) -> int:
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h


def direction_seed(seed: int, step: int, compartment: int, worker: int, index: int) -> int:
    """The 63-bit seed of one direction, a pure function of its arguments.

    Each argument is folded in through a splitmix64 round, so seeds of
    neighbouring tuples are unrelated.
    """
    return _mix((seed, step, compartment, worker, index)) >> 1


def step_seeds(seed: int, step: int, compartment: int, worker: int, dim: int) -> list[int]:
    """``[direction_seed(seed, step, compartment, worker, i) for i in range(dim)]``, faster."""
    prefix = _mix((seed, step, compartment, worker))
    return [_splitmix64(prefix ^ i) >> 1 for i in range(dim)]


def row_width(size: int) -> int:
    """W: the padded length in which a direction of length ``size`` is drawn."""
    return 64 * ((size + 63) // 64)


class _Scratch:
    """A worker's chunk buffer: ``rows`` float32 [k, W], half-width temp, bits."""

    def __init__(self, rows: int, width: int, device: torch.device):
        self.block = torch.empty(rows, width, dtype=torch.float32, device=device)
        self.bits = torch.empty(rows, width // 64, dtype=torch.int64, device=device)
        self.generator = torch.Generator(device=device)
        self.shifts = torch.arange(31, -1, -1, dtype=torch.int32, device=device)
        self.halfwords = torch.empty(rows, width // 4, dtype=torch.int64, device=device)
        self.index = torch.empty(rows, width, dtype=torch.int32, device=device)
        self.quantiles = normal_quantile_table(device)


QUANTILE_BITS = 16
_QUANTILE_TABLES: dict[torch.device, torch.Tensor] = {}


def normal_quantile_table(device: torch.device | str | None = None) -> torch.Tensor:
    """The 2^16 equiprobable standard-normal quantiles, scaled to unit variance (float32).

    Entry u is Phi^-1((u + 1/2) / 2^16) computed in float64; the table is
    symmetric, so its mean is zero exactly.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device not in _QUANTILE_TABLES:
        levels = 1 << QUANTILE_BITS
        p = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
        q = torch.special.ndtri(p)
        q = q / q.square().mean().sqrt()
        _QUANTILE_TABLES[device] = q.to(device=device, dtype=torch.float32)
    return _QUANTILE_TABLES[device]


def _fill(scratch: _Scratch, seeds, distribution: str) -> torch.Tensor:
    """Draw ``len(seeds)`` raw directions into the scratch block; returns [k, W]."""
    k = len(seeds)
    block = scratch.block[:k]
    width = block.shape[1]
    gen = scratch.generator
    if distribution == "gaussian":
        words = scratch.halfwords[:k]
        for i, s in enumerate(seeds):
            gen.manual_seed(int(s))
            words[i].random_(_INT64_MIN, None, generator=gen)
        index = scratch.index[:k]
        index.copy_(words.view(torch.int16)).bitwise_and_(0xFFFF)
        torch.index_select(scratch.quantiles, 0, index.view(-1), out=block.view(-1))
        return block
    if distribution == "uniform":
        words = block.view(torch.int64)
        for i, s in enumerate(seeds):
            gen.manual_seed(int(s))
            words[i].random_(_INT64_MIN, None, generator=gen)
        # 23 random mantissa bits under the exponent of 1.0: a float in
        # [1, 2) without an integer-to-float conversion.
        block.view(torch.int32).bitwise_and_(_MANTISSA).bitwise_or_(_ONE)
        return block.mul_(2.0).sub_(3.0)
    if distribution in ("rademacher", "bernoulli-official"):
        bits = scratch.bits[:k]
        for i, s in enumerate(seeds):
            gen.manual_seed(int(s))
            bits[i].random_(_INT64_MIN, None, generator=gen)
        # Move bit t of each int32 word to the sign bit of value t, then put
        # the exponent of 1.0 under it: +-1.0 with no float arithmetic.
        words = bits.view(torch.int32).unsqueeze(-1)
        out = block.view(torch.int32).view(k, width // 32, 32)
        torch.bitwise_left_shift(words, scratch.shifts, out=out)
        out.bitwise_and_(_INT32_MIN).bitwise_or_(_ONE)
        if distribution == "bernoulli-official":
            block.sub_(0.5)  # +1 -> +0.5, -1 -> -1.5
        return block
    raise ValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")


def _check(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")


def generate_directions(
    seeds,
    size: int,
    distribution: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Raw, unscaled directions, one row per seed: ``Tensor[len(seeds), size]``.

    Row i is a pure function of ``seeds[i]``, ``size``, the distribution and
    the device type: bit for bit the same whatever else is drawn with it and
    whatever the thread count. Gaussian: N(0, 1); uniform: U[-1, 1);
    rademacher: +-1 with p = 1/2; bernoulli-official: +0.5 / -1.5 with
    p = 1/2 (mean -0.5, variance 1, the authors' "bernoulli").
    """
    _check(distribution)
    device = torch.device(device) if device is not None else torch.device("cpu")
    scratch = _Scratch(len(seeds), row_width(size), device)
    return _fill(scratch, list(seeds), distribution)[:, :size].to(dtype=dtype, copy=True)


def default_chunk_size(size: int, distribution: str = "gaussian") -> int:
    """Directions per chunk: a chunk of float32 rows fills ``L2_BYTES``, or 4x
    that for sign distributions, whose rows are so cheap to draw that per-op
    overhead outweighs cache misses (rademacher at D = 101,770, d = 250:
    9 ms with 20-row chunks against 11 ms with 5-row ones)."""
    budget = L2_BYTES if distribution in ("gaussian", "uniform") else 4 * L2_BYTES
    return max(1, budget // (4 * row_width(max(size, 1))))


class _Workers:
    """Threads for drawing directions, each with torch's intra-op thread count
    set to 1 so that n workers keep n cores busy without oversubscription
    (nested OpenMP teams stall badly when the cores are shared)."""

    def __init__(self, n: int):
        self.queues: list[SimpleQueue] = [SimpleQueue() for _ in range(n)]
        ready = threading.Barrier(n + 1)
        threads = torch.get_num_threads()
        for q in self.queues:
            threading.Thread(
                target=self._serve, args=(q, ready), daemon=True, name="rbd-projection"
            ).start()
        ready.wait()
        # torch.set_num_threads in a thread sets that thread's count and a
        # process-wide default for threads started later; restore the latter.
        torch.set_num_threads(threads)

    @staticmethod
    def _serve(q: SimpleQueue, ready: threading.Barrier) -> None:
        torch.set_num_threads(1)
        ready.wait()
        while True:
            fn, future = q.get()
            try:
                future.set_result(fn())
            except BaseException as error:  # handed to the caller
                future.set_exception(error)

    def map(self, fns: list[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
        futures = []
        for q, fn in zip(self.queues, fns, strict=False):
            futures.append(Future())
            q.put((fn, futures[-1]))
        return [f.result() for f in futures]


_WORKERS: dict[tuple[int, int], _Workers] = {}
_WORKERS_LOCK = threading.Lock()


def _workers(n: int) -> _Workers:
    # Keyed by process id too: a forked child has none of its parent's threads.
    key = (os.getpid(), n)
    with _WORKERS_LOCK:
        if key not in _WORKERS:
            _WORKERS[key] = _Workers(n)
        return _WORKERS[key]


def project(
    grad: torch.Tensor,
    seeds,
    distribution: str,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates ``c = Phi g`` and update ``Phi^T c`` in one chunked pass.

    ``grad`` is a 1-D tensor of length D; Phi has one row per seed (the rows
    of :func:`generate_directions`). With ``normalize=True`` row i is
    ``raw_i / sqrt(D)``; otherwise it is raw and the update is divided by
    d = len(seeds). Returns ``(coords[d], update[D])`` in ``grad``'s dtype
    and device. Each worker holds one chunk of ``chunk_size`` rows (default:
    what fits in ``L2_BYTES``), never d x D. Chunk j goes to worker
    ``j % workers`` (default: ``torch.get_num_threads()`` on CPU, 1 on other
    devices); for fixed chunk size and workers the result is bit for bit
    reproducible, and other choices change it only by float rounding.
    """
    _check(distribution)
    if grad.dim() != 1:
        raise ValueError(f"grad must be 1-D, got shape {tuple(grad.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    size, dim = grad.numel(), len(seeds)
    device = grad.device
    g = grad.detach().to(torch.float32)
    chunk = chunk_size or default_chunk_size(size, distribution)
    starts = list(range(0, dim, chunk))
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    workers = max(1, min(workers, len(starts)))
    scale = 1.0 / math.sqrt(size) if normalize else 1.0
    coords = torch.empty(dim, dtype=torch.float32, device=device)
    seeds = list(seeds)

    def run(worker: int) -> torch.Tensor:
        scratch = _Scratch(min(chunk, dim), row_width(size), device)
        update = torch.zeros(size, dtype=torch.float32, device=device)
        for start in starts[worker::workers]:
            stop = min(start + chunk, dim)
            rows = _fill(scratch, seeds[start:stop], distribution)[:, :size]
            c = torch.mv(rows, g).mul_(scale)
            coords[start:stop] = c
            # This chunk's share of Phi^T c, while its rows are in cache.
            update.addmv_(rows.t(), c, alpha=scale)
        return update

    if workers == 1 or dim == 0:
        update = run(0) if dim else torch.zeros(size, dtype=torch.float32, device=device)
    else:
        # Torch releases the GIL inside ops, so the workers' generators run
        # in parallel; partial updates are summed in worker order.
        parts = _workers(workers).map([lambda w=w: run(w) for w in range(workers)])
        update = parts[0]
        for part in parts[1:]:
            update.add_(part)
    if not normalize and dim > 0:
        update.div_(dim)
    return coords.to(grad.dtype), update.to(grad.dtype)


def expand(
    coords: torch.Tensor,
    seeds,
    size: int,
    distribution: str,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """The update ``Phi^T c`` for given coordinates, regenerating Phi from ``seeds``.

    ``coords`` has one entry per seed; returns ``update[size]`` on its device
    in its dtype. The same chunks, workers and summation order as
    :func:`project`, so ``expand(project(g, s)[0], s, len(g))`` equals
    ``project(g, s)[1]`` bit for bit (distributed RBD relies on it: every
    worker rebuilds every other worker's update exactly).
    """
    _check(distribution)
    if coords.dim() != 1 or coords.numel() != len(seeds):
        raise ValueError(f"coords must be 1-D with {len(seeds)} entries, got {tuple(coords.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dim, device = len(seeds), coords.device
    c_all = coords.detach().to(torch.float32)
    chunk = chunk_size or default_chunk_size(size, distribution)
    starts = list(range(0, dim, chunk))
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    workers = max(1, min(workers, len(starts)))
    scale = 1.0 / math.sqrt(size) if normalize else 1.0
    seeds = list(seeds)

    def run(worker: int) -> torch.Tensor:
        scratch = _Scratch(min(chunk, dim), row_width(size), device)
        update = torch.zeros(size, dtype=torch.float32, device=device)
        for start in starts[worker::workers]:
            stop = min(start + chunk, dim)
            rows = _fill(scratch, seeds[start:stop], distribution)[:, :size]
            update.addmv_(rows.t(), c_all[start:stop], alpha=scale)
        return update

    if workers == 1 or dim == 0:
        update = run(0) if dim else torch.zeros(size, dtype=torch.float32, device=device)
    else:
        parts = _workers(workers).map([lambda w=w: run(w) for w in range(workers)])
        update = parts[0]
        for part in parts[1:]:
            update.add_(part)
    if not normalize and dim > 0:
        update.div_(dim)
    return update.to(coords.dtype)
