"""The random-bases engine: seeded directions and the one-pass projection.

A direction is a pure function of a 63-bit seed, itself a pure function of
(run seed, step, compartment, worker, direction index), and each of its
values is a pure function of (seed, column): value j comes from word
k = j // (values per word) of the **splitmix64 stream** of the seed,
``fmix64(seed + (k + 1) * 0x9E3779B97F4A7C15)`` (Steele, Lea and Flood
2014). Integer arithmetic is exact on every device, so the same run draws
the same bases on any CPU or GPU, for any chunk size, thread count or
worker, in the compiled kernels (:mod:`rbd.native`, CPU) and in the eager
torch ops below (any device, and the CPU's fallback where no C compiler
is found) alike. ``BASES_VERSION`` names this construction; runs record it.

Layout of one direction of length D: a row of W = 64 * ceil(D / 64) values
of which the first D are used.

- gaussian: W / 4 words, seen as W little-endian 16-bit words; word t
  indexes value t in a table of the 2^16 equiprobable normal quantiles
  Phi^-1((u + 1/2) / 2^16), rescaled to unit variance. A table look-up costs
  a third of Box-Muller's log, cos and sin; the price is a distribution
  quantised to 65,536 levels and truncated at 4.42 sigma (mass beyond it:
  1e-5), which changes no moment that random bases depend on.
- uniform: W / 2 words, one 32-bit half (23 bits used) per value.
- rademacher, bernoulli-official: W / 64 words, one bit per value
  (bit t of 32-bit half k gives value 32 k + t; a set bit is -1).

Structured distributions (``STRUCTURED``: srht, fastfood) are not drawn row
by row: Phi is a stack of blocks, each built from N x N Walsh-Hadamard
transforms, N = the next power of two >= D: a vector of length D is
placed in N slots (``placement(D)``, a fixed random D-subset, the rest
zero) and the columns of a block are its columns at those slots.
Directions ``[b N, (b + 1) N)`` form block b, and block b is a pure
function of its first seed ``seeds[b * N]`` and D; row j
of block b also does not depend on how many rows the block has. So with
``step_seeds``, block b of step t is a pure function of
``direction_seed(seed, t, compartment, worker, b * N)``. Within a block,
from the sub-seeds ``_sub_seed(s_b, part)``:

- srht: rows ``r_j`` of ``H B`` (H the +-1 Hadamard matrix in Sylvester
  order, B = diag of N random signs from part 0, drawn as a rademacher row),
  the r_j sampled without replacement by a Fisher-Yates shuffle of [0, N)
  driven by CPU int64 words from part 3 (the first rows of the shuffle, so
  row j does not depend on the block's row count).
- fastfood (Le et al. 2013): rows j = 0, 1, ... of
  ``V = S H G Pi H B / sqrt(N)``: B signs (part 0), G = diag of N gaussian
  draws (part 1), Pi a random permutation (``torch.randperm`` on a CPU
  generator, part 3: ``(Pi y)_j = y_{perm_j}``), S_jj = s_j / ||G|| with s_j
  a chi_N draw, approximated by the normal with chi_N's mean and variance
  (gaussian draws from part 2, on the CPU whatever the device; E[s_j^2] = N
  exactly).

Both raw rows have E[phi phi^T] = I_D, as the dense distributions do (an
srht row is +-1 everywhere; a fastfood entry is N(0, 1) given the signs and
the permutation, with unit second moment after S), so the same scaling
(``raw / sqrt(D)``, or the update divided by d) gives updates of the same
expected size as Gaussian bases. Rows within a block are orthogonal on all
N slots and nearly orthogonal on the D used ones: inner products of
normalised rows have rms sqrt((N - D) / N) / sqrt(D) (srht) and about
sqrt((N + D) / N) / sqrt(D) (fastfood, from its shared G), against
1 / sqrt(D) for Gaussian rows; blocks are independent.
``project`` and ``expand`` apply Phi and Phi^T as transforms, O(N log N)
per block whatever the number of rows, never materialising a row.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from queue import SimpleQueue

import torch

from rbd import BASES_VERSION, native  # noqa: F401  (re-exported)

DENSE = ("gaussian", "uniform", "rademacher", "bernoulli-official")
STRUCTURED = ("srht", "fastfood")
DISTRIBUTIONS = DENSE + STRUCTURED

# Bytes of directions generated at once per worker: one core's L2 cache
# (2 MiB here), so a chunk is still cached when it is used for c = Phi g and
# Phi^T c. Smaller chunks lose more to per-op overhead (1 MiB was ~10%
# slower at D = 101,770).
L2_BYTES = 2 << 20
# Bytes of rows per chunk on a GPU (the words and indices take about as much again
# each): d = 2,500 directions at D = 10^5 in one chunk, so the kernels a step
# launches do not grow with d.
DEVICE_CHUNK_BYTES = 1 << 30

_MASK64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT32_MIN = -(1 << 31)
_MANTISSA = 0x007FFFFF
_ONE = 0x3F800000  # float32 bit pattern of 1.0

# splitmix64's increment and finaliser multipliers.
_GAMMA = 0x9E3779B97F4A7C15
_FMIX = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None))
# Random values per 64-bit word, and the kernels' code of each dense distribution.
_PER_WORD = {"gaussian": 4, "uniform": 2, "rademacher": 64, "bernoulli-official": 64}
_KERNEL_CODE = {"gaussian": 0, "uniform": 1, "rademacher": 2, "bernoulli-official": 3}


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 that torch stores for it."""
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


def _splitmix64(x: int) -> int:
    """The splitmix64 step and finaliser: a bijection on 64-bit ints."""
    x = (x + _GAMMA) & _MASK64
    for shift, mult in _FMIX:
        x ^= x >> shift
        if mult is not None:
            x = (x * mult) & _MASK64
    return x


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
    # _splitmix64(prefix ^ i) >> 1, inlined with local names: 2x faster at d = 250.
    (first, mult1), (second, mult2), (third, _) = _FMIX
    gamma, mask = _GAMMA, _MASK64
    seeds = []
    for i in range(dim):
        x = ((prefix ^ i) + gamma) & mask
        x = ((x ^ (x >> first)) * mult1) & mask
        x = ((x ^ (x >> second)) * mult2) & mask
        seeds.append((x ^ (x >> third)) >> 1)
    return seeds


def row_width(size: int) -> int:
    """W: the padded length in which a direction of length ``size`` is drawn."""
    return 64 * ((size + 63) // 64)


_COUNTERS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _counters(count: int, device: torch.device) -> torch.Tensor:
    """``(k + 1) * GAMMA`` mod 2^64 for k < count, as int64 (torch's products wrap)."""
    key = (count, device)
    if key not in _COUNTERS:
        k = torch.arange(1, count + 1, dtype=torch.int64, device=device)
        _COUNTERS[key] = k.mul_(_signed(_GAMMA))
    return _COUNTERS[key]


def _fmix64_(z: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser in place on int64 ``z`` (``tmp``: scratch of its shape).
    torch's ``>>`` on int64 is arithmetic, so each shift is masked to a logical one."""
    for shift, mult in _FMIX:
        torch.bitwise_right_shift(z, shift, out=tmp)
        z.bitwise_xor_(tmp.bitwise_and_((1 << (64 - shift)) - 1))
        if mult is not None:
            z.mul_(_signed(mult))
    return z


class _Scratch:
    """A worker's chunk buffers: ``rows`` float32 [k, W] values; the eager path's words,
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


def _stream_words(scratch: _Scratch, seeds: torch.Tensor, count: int) -> torch.Tensor:
    """Words 0..count-1 of each seed's splitmix64 stream: int64 [len(seeds), count]."""
    k = len(seeds)
    words = scratch.words[: k * count].view(k, count)
    torch.add(seeds.view(k, 1), _counters(count, seeds.device), out=words)
    return _fmix64_(words, scratch.temp[: k * count].view(k, count))


def _fill(scratch: _Scratch, seeds, distribution: str) -> torch.Tensor:
    """Draw ``len(seeds)`` raw directions into the scratch block; returns [k, W]."""
    _check(distribution)
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
            _KERNEL_CODE[distribution],
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


def _check(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")


# ---------------------------------------------------------------------------
# Structured bases (srht, fastfood): Phi applied as fast transforms.


def padded_size(size: int) -> int:
    """N: the power of two (>= 1) to which structured bases pad a vector of length ``size``."""
    return 1 << max(size - 1, 0).bit_length()


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Walsh-Hadamard transform ``x H`` along the last dimension.

    H is the N x N +-1 Hadamard matrix in Sylvester order (H_1 = [1],
    H_2n = [[H_n, H_n], [H_n, -H_n]]); N, the last dimension, must be a power
    of two. log2(N) butterfly stages, each two elementwise ops on reshaped
    views (no reductions, so the result does not depend on the thread count).
    Returns a new tensor of x's shape; any device.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    a = x.reshape(-1, n).clone()
    b = torch.empty_like(a)
    h = 1
    while h < n:
        src = a.view(-1, n // (2 * h), 2, h)
        dst = b.view(-1, n // (2 * h), 2, h)
        torch.add(src[:, :, 0], src[:, :, 1], out=dst[:, :, 0])
        torch.sub(src[:, :, 0], src[:, :, 1], out=dst[:, :, 1])
        a, b = b, a
        h *= 2
    return a.view(x.shape)


def _fold(x: torch.Tensor, width: int) -> torch.Tensor:
    """Sum the last dimension's aligned segments of length ``width`` (a power of
    two dividing it) by pairwise halving: the same bits for any thread count."""
    while x.shape[-1] > width:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x


def fwht_head(x: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` entries of ``fwht(x)``, in O(N + K log K), K = padded_size(count).

    Sylvester order makes H_N = H_{N/K} (x) H_K, and the first K rows of
    H_{N/K} are all ones: fold x to length K, then transform.
    """
    return fwht(_fold(x, min(padded_size(count), x.shape[-1])))[..., :count]


def fwht_tail(head: torch.Tensor, n: int) -> torch.Tensor:
    """``fwht(z)`` for a z of length n that is zero after its first K = head's length
    entries (a power of two): the transform of the head, tiled n / K times."""
    return fwht(head).repeat(*([1] * (head.dim() - 1)), n // head.shape[-1])


def _sub_seed(seed: int, part: int) -> int:
    return _mix((seed, part)) >> 1


def _shuffled_prefix(seed: int, n: int, count: int) -> list[int]:
    """The first ``count`` entries of a Fisher-Yates shuffle of range(n), in O(count).

    Word i (CPU int64 draws, seeded ``seed``) picks entry i among the
    n - i not yet taken; the modulo bias is below n / 2^63.
    """
    gen = torch.Generator().manual_seed(seed)
    words = torch.empty(count, dtype=torch.int64).random_(_INT64_MIN, None, generator=gen)
    moved: dict[int, int] = {}
    out = []
    for i, w in enumerate(words.tolist()):
        j = i + w % (n - i)
        out.append(moved.get(j, j))
        moved[j] = moved.get(i, i)
    return out


# Seed of the fixed placement of D coordinates among N slots (any constant).
PLACEMENT_SEED = 0x5EED
_PLACEMENTS: dict[tuple[int, torch.device], torch.Tensor | None] = {}


def placement(size: int, device: torch.device | str | None = None) -> torch.Tensor | None:
    """Where the D entries of a vector go in the padded length N: sorted, fixed per D.

    A uniformly random D-subset of [0, N) drawn once from ``PLACEMENT_SEED``
    and D (None when D = N: the identity). Zero-padding at the end instead
    would keep only the first D columns of H, and two Hadamard rows r, r'
    then have the inner product sum_{k < D} H_{r xor r', k}, large for the few
    r xor r' whose set bits are all high (0.64 D for r xor r' = N/2 at
    D = 20,000): such pairs of SRHT directions would be strongly correlated
    whatever the random signs (they cancel in a product of two rows). Over a
    random subset these sums are O(sqrt(D)), as for Gaussian rows.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (size, device)
    if key not in _PLACEMENTS:
        n = padded_size(size)
        if n == size:
            _PLACEMENTS[key] = None
        else:
            gen = torch.Generator().manual_seed(_mix((PLACEMENT_SEED, size)) >> 1)
            chosen = torch.randperm(n, generator=gen)[:size].sort().values
            _PLACEMENTS[key] = chosen.to(device)
    return _PLACEMENTS[key]


def _chi_mean(n: int) -> float:
    """E[chi_n] = sqrt(2) Gamma((n + 1) / 2) / Gamma(n / 2)."""
    return math.sqrt(2.0) * math.exp(math.lgamma((n + 1) / 2) - math.lgamma(n / 2))


_WORKSPACE = threading.local()


def _workspace(role: str, shape: tuple, dtype: torch.dtype, device: torch.device):
    """A tensor that this thread's StructuredBlocks reuse for ``role`` at this shape.

    Fresh N-length buffers every step made the kernel zero new pages (about
    a thousand page faults, 1 ms, per fastfood step at N = 2^17, depending
    on the allocator's state); reused ones stay mapped.
    """
    cache = getattr(_WORKSPACE, "tensors", None)
    if cache is None:
        cache = _WORKSPACE.tensors = {}
    key = (role, shape, dtype, device)
    if key not in cache:
        cache[key] = torch.empty(shape, dtype=dtype, device=device)
    return cache[key]


def _draw(role: str, seeds: list[int], n: int, distribution: str, device: torch.device):
    """``generate_directions(seeds, n, distribution)`` into this thread's workspace."""
    key = ("scratch", len(seeds), row_width(n), device)
    cache = getattr(_WORKSPACE, "tensors", None)
    if cache is None:
        cache = _WORKSPACE.tensors = {}
    if key not in cache:
        cache[key] = _Scratch(len(seeds), row_width(n), device)
    out = _workspace(role, (len(seeds), n), torch.float32, device)
    return out.copy_(_fill(cache[key], seeds, distribution)[:, :n])


class StructuredBlocks:
    """The random factors of a structured Phi with one row per seed (see the module docstring).

    ``n`` (N), ``rows`` (rows per block, min(d, N); the last block uses only
    its first ``d - (blocks - 1) N``), ``signs`` [blocks, N] (B, or SRHT's
    signs), and per distribution: ``selected`` [blocks, rows] int64 (srht:
    the rows of H B), or ``gaussian`` [blocks, N] (G), ``perm`` [blocks, N]
    int64 (Pi) and ``row_scale`` [blocks, rows] (S_jj / sqrt(N)) for fastfood.
    ``signs``, ``gaussian`` and (on the CPU) ``perm`` live in a per-thread
    workspace that the next StructuredBlocks of the same shape on the same
    thread overwrites: use one at a time (project and expand do).
    """

    def __init__(self, seeds, size: int, distribution: str, device: torch.device):
        if distribution not in STRUCTURED:
            raise ValueError(f"{distribution!r} is not a structured distribution {STRUCTURED}")
        seeds = [int(s) for s in seeds]
        self.distribution, self.size, self.dim = distribution, size, len(seeds)
        self.n = n = padded_size(size)
        self.placement = placement(size, device)
        firsts = seeds[::n]
        self.rows = min(self.dim, n)
        self.signs = _draw("signs", [_sub_seed(s, 0) for s in firsts], n, "rademacher", device)
        if distribution == "srht":
            self.selected = torch.tensor(
                [_shuffled_prefix(_sub_seed(s, 3), n, self.rows) for s in firsts],
                dtype=torch.int64,
            ).to(device)
            return
        self.gaussian = _draw("gaussian", [_sub_seed(s, 1) for s in firsts], n, "gaussian", device)
        perm = _workspace("perm", (len(firsts), n), torch.int64, torch.device("cpu"))
        for b, s in enumerate(firsts):
            gen = torch.Generator().manual_seed(_sub_seed(s, 3))
            torch.randperm(n, generator=gen, out=perm[b])
        self.perm = perm.to(device)
        # Only the rows' s_j, drawn on the CPU (whose int64 stream is sequential,
        # so s_j does not depend on the row count), then moved.
        z = generate_directions([_sub_seed(s, 2) for s in firsts], self.rows, "gaussian")
        mean = _chi_mean(n)
        chi = z.to(device).mul_(math.sqrt(max(n - mean * mean, 0.0))).add_(mean)
        norm_g = _fold(self.gaussian.square(), 1).sqrt_()
        self.row_scale = chi.div_(norm_g).div_(math.sqrt(n))

    @property
    def blocks(self) -> int:
        return self.signs.shape[0]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Raw coordinates ``Phi_raw x`` of a length-D vector: Tensor[d]."""
        n, k = self.n, self.rows
        padded = torch.zeros(n, dtype=torch.float32, device=x.device)
        if self.placement is None:
            padded.copy_(x)
        else:
            padded.index_copy_(0, self.placement, x)
        y = fwht(self.signs * padded)
        if self.distribution == "srht":
            c = y.gather(1, self.selected)
        else:
            y = y.gather(1, self.perm).mul_(self.gaussian)
            c = fwht_head(y, k).mul_(self.row_scale)
        return c.reshape(-1)[: self.dim]

    def transpose(self, coords: torch.Tensor, blocks: slice | None = None) -> torch.Tensor:
        """``Phi_raw^T`` of per-block coefficients: coords [m, rows] -> [m, N], one row each.

        Row i uses block i's factors, or with ``blocks`` (a slice of one
        block) that block's for every row (materialising rows). Not summed
        over blocks and not restricted to the D used slots.
        """
        sel = blocks if blocks is not None else slice(None)
        m, n = coords.shape[0], self.n
        if self.distribution == "srht":
            z = torch.zeros(m, n, dtype=torch.float32, device=coords.device)
            z.scatter_(1, self.selected[sel].expand(m, -1), coords)
            return fwht(z).mul_(self.signs[sel])
        head = torch.zeros(m, min(padded_size(self.rows), n), device=coords.device)
        head[:, : self.rows] = coords * self.row_scale[sel]
        y = fwht_tail(head, n).mul_(self.gaussian[sel])
        w = torch.zeros_like(y).scatter_(1, self.perm[sel].expand(m, -1), y)
        return fwht(w).mul_(self.signs[sel])

    def expand(self, coords: torch.Tensor) -> torch.Tensor:
        """``Phi_raw^T c`` for raw coordinates c [d]: Tensor[D], blocks summed in order."""
        padded = torch.zeros(self.blocks * self.rows, dtype=torch.float32, device=coords.device)
        padded[: self.dim] = coords
        parts = self.transpose(padded.view(self.blocks, self.rows))
        update = parts[0]
        for part in parts[1:]:
            update.add_(part)
        return self._unpad(update)

    def _unpad(self, x: torch.Tensor) -> torch.Tensor:
        """The D entries of padded vectors x [..., N] that correspond to the input's."""
        if self.placement is None:
            return x.clone()
        return x.index_select(-1, self.placement)

    def directions(self, start: int = 0, stop: int | None = None, max_bytes: int = 32 << 20):
        """Raw rows ``start:stop`` materialised: Tensor[stop - start, D], each
        row ``Phi_raw^T e_i``, at most ``max_bytes`` of padded rows at a time."""
        stop = self.dim if stop is None else min(stop, self.dim)
        device = self.signs.device
        out = torch.empty(max(stop - start, 0), self.size, dtype=torch.float32, device=device)
        step = max(1, max_bytes // (4 * self.n))
        i = start
        while i < stop:
            b, j = divmod(i, self.rows)
            m = min(step, self.rows - j, stop - i)
            unit = torch.zeros(m, self.rows, dtype=torch.float32, device=device)
            unit[torch.arange(m), torch.arange(j, j + m)] = 1.0
            out[i - start : i - start + m] = self._unpad(self.transpose(unit, slice(b, b + 1)))
            i += m
        return out


def generate_directions(
    seeds,
    size: int,
    distribution: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Raw, unscaled directions, one row per seed: ``Tensor[len(seeds), size]``.

    Row i is a pure function of ``seeds[i]``, ``size`` and the distribution:
    bit for bit the same on every device and path (compiled or eager),
    whatever else is drawn with it and whatever the thread count.
    Gaussian: N(0, 1); uniform: U[-1, 1); rademacher: +-1 with p = 1/2;
    bernoulli-official: +0.5 / -1.5 with p = 1/2 (mean -0.5, variance 1, the
    authors' "bernoulli").

    Structured distributions (srht, fastfood) materialise the rows of the
    Phi that :func:`project` applies as a transform (to float rounding):
    row i is a pure function of ``seeds[N * (i // N)]``, ``i % N`` and ``size``
    (N = ``padded_size(size)``; the transforms' rounding may differ by device),
    so rows of one block do depend on their neighbours' positions, unlike dense rows. Costs
    O(N log N) per row.
    """
    _check(distribution)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if distribution in STRUCTURED:
        if not len(seeds):
            return torch.empty(0, size, dtype=dtype, device=device)
        return StructuredBlocks(seeds, size, distribution, device).directions().to(dtype)
    scratch = _Scratch(len(seeds), row_width(size), device)
    return _fill(scratch, list(seeds), distribution)[:, :size].to(dtype=dtype, copy=True)


def direction_chunks(
    seeds,
    size: int,
    distribution: str,
    chunk_size: int,
    *,
    device: torch.device | str | None = None,
):
    """Yield ``(start, rows)``: the rows of ``generate_directions(seeds, size,
    distribution)`` in chunks of ``chunk_size``, holding one chunk at a time
    (structured rows come from the whole seed list, not the chunk's seeds)."""
    _check(distribution)
    seeds = list(seeds)
    device = torch.device(device) if device is not None else torch.device("cpu")
    blocks = None
    if distribution in STRUCTURED and seeds:
        blocks = StructuredBlocks(seeds, size, distribution, device)
    for start in range(0, len(seeds), chunk_size):
        stop = min(start + chunk_size, len(seeds))
        if blocks is not None:
            yield start, blocks.directions(start, stop)
        else:
            yield start, generate_directions(seeds[start:stop], size, distribution, device=device)


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

    Structured distributions: c = Phi g and Phi^T c by fast Walsh-Hadamard
    transforms, O(N log N) per block of N rows (N = ``padded_size(D)``)
    whatever d, on one CPU thread; ``chunk_size`` and ``workers`` are
    ignored, and the result is bit for bit the same for any thread count.
    """
    coords, update = _project(grad, seeds, distribution, normalize, chunk_size, workers, True)
    return coords, update


def coordinates(
    grad: torch.Tensor,
    seeds,
    distribution: str,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """``project(grad, seeds, ...)[0]`` without forming the update: half the work where
    the update is built later from other coordinates (a DDP hook expands the workers'
    mean). The same chunks and workers as :func:`project`, so the same bits."""
    return _project(grad, seeds, distribution, normalize, chunk_size, workers, False)[0]


def _project(grad, seeds, distribution, normalize, chunk_size, workers, with_update):
    """:func:`project`, or with ``with_update=False`` its coordinates alone (update None)."""
    _check(distribution)
    if grad.dim() != 1:
        raise ValueError(f"grad must be 1-D, got shape {tuple(grad.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    size, dim, device = grad.numel(), len(seeds), grad.device
    g = grad.detach().to(torch.float32)
    if distribution in STRUCTURED:
        with _one_thread(device):
            blocks = StructuredBlocks(seeds, size, distribution, device) if dim else None
            coords = blocks.apply(g) if dim else torch.zeros(0, device=device)
            if normalize:
                coords.mul_(1.0 / math.sqrt(size))
            update = None
            if with_update:
                update = _structured_update(blocks, coords, size, normalize, device)
    else:
        coords = torch.empty(dim, dtype=torch.float32, device=device)
        update = _dense_update(
            seeds,
            size,
            distribution,
            device,
            normalize=normalize,
            chunk_size=chunk_size,
            workers=workers,
            coords=coords,
            grad=g.contiguous(),
            with_update=with_update,
        )
    return coords.to(grad.dtype), None if update is None else update.to(grad.dtype)


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
    if distribution in STRUCTURED:
        with _one_thread(device):
            blocks = StructuredBlocks(seeds, size, distribution, device) if dim else None
            update = _structured_update(blocks, c_all, size, normalize, device)
        return update.to(coords.dtype)
    update = _dense_update(
        seeds,
        size,
        distribution,
        device,
        normalize=normalize,
        chunk_size=chunk_size,
        workers=workers,
        coords=c_all.contiguous(),
        grad=None,
    )
    return update.to(coords.dtype)


def _dense_update(
    seeds,
    size: int,
    distribution: str,
    device: torch.device,
    *,
    normalize: bool,
    chunk_size: int | None,
    workers: int | None,
    coords: torch.Tensor,
    grad: torch.Tensor | None,
    with_update: bool = True,
) -> torch.Tensor | None:
    """Phi^T c for dense distributions, drawing Phi chunk by chunk, never d x D.

    With ``grad``, the scaled coordinates of each chunk's rows are computed from it
    into ``coords`` (:func:`project`); without, ``coords`` holds them (:func:`expand`).
    Both share these chunks, workers and summation order, so they agree bit for bit.
    ``with_update=False`` only fills ``coords`` (:func:`coordinates`) and returns None.
    On the CPU the compiled kernels draw each row and use it in one pass, chunk by
    chunk (default: one contiguous chunk per worker); elsewhere, and where they
    cannot be built, eager torch ops draw the same rows.
    """
    dim = len(seeds)
    if dim == 0:
        return torch.zeros(size, dtype=torch.float32, device=device)
    lib = native.library() if device.type == "cpu" else None
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    workers = max(1, workers)
    if chunk_size is not None:
        chunk = chunk_size
    elif lib is not None:
        chunk = -(-dim // workers)
    else:
        chunk = default_chunk_size(size, distribution, device)
    starts = list(range(0, dim, chunk))
    workers = min(workers, len(starts))
    scale = 1.0 / math.sqrt(size) if normalize else 1.0
    seed_tensor = _seed_tensor(seeds, device)

    def compiled(worker: int) -> torch.Tensor | None:
        update = torch.zeros(size, dtype=torch.float32, device=device) if with_update else None
        table = normal_quantile_table(device)
        for start in starts[worker::workers]:
            rows = min(chunk, dim - start)
            lib.rbd_project(
                native.pointer(seed_tensor[start:]),
                rows,
                size,
                _KERNEL_CODE[distribution],
                native.pointer(table),
                None if grad is None else native.pointer(grad),
                scale,
                int(grad is None),
                native.pointer(coords[start:]),
                None if update is None else native.pointer(update),
            )
        return update

    def eager(worker: int) -> torch.Tensor | None:
        scratch = _Scratch(min(chunk, dim), row_width(size), device)
        update = torch.zeros(size, dtype=torch.float32, device=device) if with_update else None
        for start in starts[worker::workers]:
            stop = min(start + chunk, dim)
            rows = _fill(scratch, seed_tensor[start:stop], distribution)[:, :size]
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
    if workers == 1:
        update = run(0)
        if update is None:
            return None
    else:
        # Torch ops and the kernels release the GIL, so the workers run in
        # parallel; partial updates are summed in worker order.
        parts = _workers(workers).map([lambda w=w: run(w) for w in range(workers)])
        if not with_update:
            return None
        update = parts[0]
        for part in parts[1:]:
            update.add_(part)
    if not normalize:
        update.div_(dim)
    return update


@contextmanager
def _one_thread(device: torch.device):
    """Run torch's CPU ops on one thread: a transform is ~40 small ops, and on
    shared cores each two-thread op can wait a time slice for the busy core
    (fastfood at D = 101,770: 4.7 ms per step on one thread, 37 ms on two,
    with the other core loaded)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _structured_update(blocks, coords, size: int, normalize: bool, device) -> torch.Tensor:
    """Phi^T c for scaled coordinates, shared by project and expand (same ops, same bits)."""
    if blocks is None:
        return torch.zeros(size, dtype=torch.float32, device=device)
    update = blocks.expand(coords)
    return update.mul_(1.0 / math.sqrt(size)) if normalize else update.div_(len(coords))
