"""Dense directions (gaussian, uniform, rademacher, bernoulli-official): rows drawn
value by value from their seeds' splitmix64 streams, by the compiled kernels on the
CPU (:mod:`rbd.bases.native`) or by eager torch ops (any device), and Phi^T c built
chunk by chunk, never holding d x D."""

from __future__ import annotations

import functools
import math
from typing import cast

import torch

from rbd.bases import native
from rbd.bases.distributions import STRUCTURED, check_distribution
from rbd.bases.seeds import FMIX, GAMMA, signed64
from rbd.bases.threads import thread_pool

# Bytes of directions generated at once per thread: one core's L2 cache
# (2 MiB here), so a chunk is still cached when it is used for c = Phi g and
# Phi^T c. Smaller chunks lose more to per-op overhead (1 MiB was ~10%
# slower at D = 101,770).
L2_BYTES = 2 << 20


# Bytes of rows per chunk on a GPU (the words and indices take about as much again
# each): d = 2,500 directions at D = 10^5 in one chunk, so the kernels a step
# launches do not grow with d.
DEVICE_CHUNK_BYTES = 1 << 30


_INT32_MIN = -(1 << 31)


_MANTISSA = 0x007FFFFF


_ONE = 0x3F800000  # float32 bit pattern of 1.0


# Random values per 64-bit word, and the kernels' code of each dense distribution.
_PER_WORD = {"gaussian": 4, "uniform": 2, "rademacher": 64, "bernoulli-official": 64}


KERNEL_CODE = {"gaussian": 0, "uniform": 1, "rademacher": 2, "bernoulli-official": 3}


def row_width(size: int) -> int:
    """W: the padded length in which a direction of length ``size`` is drawn."""
    return 64 * ((size + 63) // 64)


_COUNTERS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _counters(count: int, device: torch.device) -> torch.Tensor:
    """``(k + 1) * GAMMA`` mod 2^64 for k < count, as int64 (torch's products wrap)."""
    key = (count, device)
    if key not in _COUNTERS:
        k = torch.arange(1, count + 1, dtype=torch.int64, device=device)
        _COUNTERS[key] = k.mul_(signed64(GAMMA))
    return _COUNTERS[key]


def _fmix64_(z: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser in place on int64 ``z`` (``tmp``: scratch of its shape).
    torch's ``>>`` on int64 is arithmetic, so each shift is masked to a logical one."""
    for shift, mult in FMIX:
        torch.bitwise_right_shift(z, shift, out=tmp)
        z.bitwise_xor_(tmp.bitwise_and_((1 << (64 - shift)) - 1))
        if mult is not None:
            z.mul_(signed64(mult))
    return z


class Scratch:
    """A thread's chunk buffers: ``rows`` float32 [k, W] values; the eager path's words,
    temps and indices are allocated on first use (the compiled kernels need none)."""

    def __init__(self, rows: int, width: int, device: torch.device):
        self.block = torch.empty(rows, width, dtype=torch.float32, device=device)
        self.quantiles = normal_quantile_table(device)

    @functools.cached_property
    def words(self) -> torch.Tensor:
        # Words for the widest use (uniform: two values per word).
        return torch.empty(self.block.numel() // 2, dtype=torch.int64, device=self.block.device)

    @functools.cached_property
    def temp(self) -> torch.Tensor:
        return torch.empty_like(self.words)

    @functools.cached_property
    def shifts(self) -> torch.Tensor:
        return torch.arange(31, -1, -1, dtype=torch.int32, device=self.block.device)

    @functools.cached_property
    def index(self) -> torch.Tensor:
        return torch.empty(self.block.shape, dtype=torch.int32, device=self.block.device)


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


def _seed_tensor(seeds, device: torch.device) -> torch.Tensor:
    if isinstance(seeds, torch.Tensor):
        return seeds.to(device=device, dtype=torch.int64)
    return torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device)


def _stream_words(scratch: Scratch, seeds: torch.Tensor, count: int) -> torch.Tensor:
    """Words 0..count-1 of each seed's splitmix64 stream: int64 [len(seeds), count]."""
    k = len(seeds)
    words = scratch.words[: k * count].view(k, count)
    torch.add(seeds.view(k, 1), _counters(count, seeds.device), out=words)
    return _fmix64_(words, scratch.temp[: k * count].view(k, count))


def fill_rows(scratch: Scratch, seeds, distribution: str) -> torch.Tensor:
    """Draw ``len(seeds)`` raw directions into the scratch block; returns [k, W]."""
    check_distribution(distribution)
    k = len(seeds)
    block = scratch.block[:k]
    width = block.shape[1]
    if distribution in STRUCTURED:
        raise ValueError(f"{distribution!r} rows are not drawn value by value")
    if k == 0:
        return block
    lib = native.library() if block.device.type == "cpu" else None
    if lib is not None:
        seeds = _seed_tensor(seeds, block.device)
        lib.rbd_fill(
            native.pointer(seeds),
            k,
            width,
            KERNEL_CODE[distribution],
            native.pointer(scratch.quantiles),
            native.pointer(block),
        )
        return block
    words = _stream_words(
        scratch, _seed_tensor(seeds, block.device), width // _PER_WORD[distribution]
    )
    if distribution == "gaussian":
        index = scratch.index[:k]
        index.copy_(words.view(torch.int16)).bitwise_and_(0xFFFF)
        torch.index_select(scratch.quantiles, 0, index.view(-1), out=block.view(-1))
        return block
    if distribution == "uniform":
        # 23 random mantissa bits under the exponent of 1.0: a float in
        # [1, 2) without an integer-to-float conversion.
        halves = block.view(torch.int32)
        halves.copy_(words.view(torch.int32)).bitwise_and_(_MANTISSA).bitwise_or_(_ONE)
        return block.mul_(2.0).sub_(3.0)
    # Move bit t of each 32-bit half to the sign bit of value t, then put the
    # exponent of 1.0 under it: +-1.0 with no float arithmetic.
    halves = words.view(torch.int32).unsqueeze(-1)
    out = block.view(torch.int32).view(k, width // 32, 32)
    torch.bitwise_left_shift(halves, scratch.shifts, out=out)
    out.bitwise_and_(_INT32_MIN).bitwise_or_(_ONE)
    if distribution == "bernoulli-official":
        block.sub_(0.5)  # +1 -> +0.5, -1 -> -1.5
    return block


def default_chunk_size(size: int, distribution: str = "gaussian", device=None) -> int:
    """Directions per chunk of the eager path. CPU: a chunk of float32 rows fills
    ``L2_BYTES``, or 4x that for sign distributions, whose rows are so cheap to draw
    that per-op overhead outweighs cache misses. Other devices: ``DEVICE_CHUNK_BYTES``,
    so that a step is a fixed handful of kernels for any d that fits."""
    if device is not None and torch.device(device).type != "cpu":
        budget = DEVICE_CHUNK_BYTES
    else:
        budget = L2_BYTES if distribution in ("gaussian", "uniform") else 4 * L2_BYTES
    return max(1, budget // (4 * row_width(max(size, 1))))


def dense_update(
    seeds,
    size: int,
    distribution: str,
    device: torch.device,
    *,
    normalize: bool,
    chunk_size: int | None,
    threads: int | None,
    coords: torch.Tensor,
    grad: torch.Tensor | None,
    with_update: bool = True,
) -> torch.Tensor | None:
    """Phi^T c for dense distributions, drawing Phi chunk by chunk, never d x D.

    With ``grad``, the scaled coordinates of each chunk's rows are computed from it
    into ``coords`` (:func:`project`); without, ``coords`` holds them (:func:`expand`).
    Both share these chunks, threads and summation order, so they agree bit for bit.
    ``with_update=False`` only fills ``coords`` (:func:`project_coordinates`) and returns None.
    On the CPU the compiled kernels draw each row and use it in one pass, chunk by
    chunk (default: one contiguous chunk per thread); elsewhere, and where they
    cannot be built, eager torch ops draw the same rows.
    """
    dim = len(seeds)
    if dim == 0:
        return torch.zeros(size, dtype=torch.float32, device=device)
    lib = native.library() if device.type == "cpu" else None
    if threads is None:
        threads = torch.get_num_threads() if device.type == "cpu" else 1
    threads = max(1, threads)
    if chunk_size is not None:
        chunk = chunk_size
    elif lib is not None:
        chunk = -(-dim // threads)
    else:
        chunk = default_chunk_size(size, distribution, device)
    starts = list(range(0, dim, chunk))
    threads = min(threads, len(starts))
    scale = 1.0 / math.sqrt(size) if normalize else 1.0
    seed_tensor = _seed_tensor(seeds, device)

    def compiled(thread: int) -> torch.Tensor | None:
        update = torch.zeros(size, dtype=torch.float32, device=device) if with_update else None
        table = normal_quantile_table(device)
        for start in starts[thread::threads]:
            rows = min(chunk, dim - start)
            lib.rbd_project(  # type: ignore[union-attr]  # run only when lib is not None
                native.pointer(seed_tensor[start:]),
                rows,
                size,
                KERNEL_CODE[distribution],
                native.pointer(table),
                None if grad is None else native.pointer(grad),
                scale,
                int(grad is None),
                native.pointer(coords[start:]),
                None if update is None else native.pointer(update),
            )
        return update

    def eager(thread: int) -> torch.Tensor | None:
        scratch = Scratch(min(chunk, dim), row_width(size), device)
        update = torch.zeros(size, dtype=torch.float32, device=device) if with_update else None
        for start in starts[thread::threads]:
            stop = min(start + chunk, dim)
            rows = fill_rows(scratch, seed_tensor[start:stop], distribution)[:, :size]
            if grad is None:
                c = coords[start:stop]
            else:
                c = torch.mv(rows, grad).mul_(scale)
                coords[start:stop] = c
            if update is not None:
                # This chunk's share of Phi^T c, while its rows are in cache.
                update.addmv_(rows.t(), c, alpha=scale)
        return update

    run = compiled if lib is not None else eager
    if threads == 1:
        update = run(0)
        if update is None:
            return None
    else:
        # Torch ops and the kernels release the GIL, so the threads run in
        # parallel; partial updates are summed in thread order.
        parts = thread_pool(threads).map([functools.partial(run, w) for w in range(threads)])
        if not with_update:
            return None
        update = cast(torch.Tensor, parts[0])  # with an update, no part is None
        for part in parts[1:]:
            update.add_(cast(torch.Tensor, part))
    if not normalize:
        update.div_(dim)
    return update


def dense_directions(
    seeds, size: int, distribution: str, device: torch.device, dtype
) -> torch.Tensor:
    """Raw dense rows, one per seed: ``generate_directions``' dense case."""
    scratch = Scratch(len(seeds), row_width(size), device)
    return fill_rows(scratch, list(seeds), distribution)[:, :size].to(dtype=dtype, copy=True)
