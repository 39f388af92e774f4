"""Structured directions (srht, fastfood): Phi as a stack of blocks built from
Walsh-Hadamard transforms, applied in O(N log N) per block, never materialised
(the constructions are described in :mod:`rbd.bases`)."""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import torch

from rbd.bases.dense import Scratch, dense_directions, fill_rows, row_width
from rbd.bases.distributions import STRUCTURED
from rbd.bases.seeds import mix

_INT64_MIN = -(1 << 63)


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
    return mix((seed, part)) >> 1


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
            gen = torch.Generator().manual_seed(mix((PLACEMENT_SEED, size)) >> 1)
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
        cache[key] = Scratch(len(seeds), row_width(n), device)
    out = _workspace(role, (len(seeds), n), torch.float32, device)
    return out.copy_(fill_rows(cache[key], seeds, distribution)[:, :n])


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
        chi_seeds = [_sub_seed(s, 2) for s in firsts]
        z = dense_directions(chi_seeds, self.rows, "gaussian", torch.device("cpu"), torch.float32)
        mean = _chi_mean(n)
        chi = z.to(device).mul_(math.sqrt(max(n - mean * mean, 0.0))).add_(mean)
        norm_g = _fold(self.gaussian.square(), 1).sqrt_()
        self.row_scale = chi.div_(norm_g).div_(math.sqrt(n))

    @property
    def blocks(self) -> int:
        return self.signs.shape[0]

    def kept(self) -> StructuredBlocks:
        """These blocks with factors of their own, out of the per-thread workspace, so that
        they can be kept and reused while other blocks are drawn (FPD's fixed Phi)."""
        for name in ("signs", "gaussian", "perm"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name).clone())
        return self

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


@contextmanager
def one_thread(device: torch.device):
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


def structured_update(blocks, coords, size: int, normalize: bool, device) -> torch.Tensor:
    """Phi^T c for scaled coordinates, shared by project and expand (same ops, same bits)."""
    if blocks is None:
        return torch.zeros(size, dtype=torch.float32, device=device)
    update = blocks.expand(coords)
    return update.mul_(1.0 / math.sqrt(size)) if normalize else update.div_(len(coords))
