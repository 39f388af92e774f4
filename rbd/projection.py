"""The random-bases engine: seeded directions and the one-pass projection.

A direction is a pure function of a 63-bit seed, itself a pure function of
(run seed, step, compartment, worker, direction index). Each direction gets
its own freshly seeded generator, so a direction does not depend on how many
directions are drawn together (the chunk size), on thread count, or on which
worker draws it. The only random primitive used is ``Tensor.random_`` on
integer tensors, whose bits do not depend on the CPU's vector instruction set
(``torch.randn`` does); Gaussians are built from those bits by Box-Muller.
"""

from __future__ import annotations

import math

import torch

DISTRIBUTIONS = ("gaussian", "uniform", "rademacher", "bernoulli-official")

# Chunks of directions sized to stay in a core's L2 cache (2 MiB here) while
# being generated, projected and accumulated.
L2_BYTES = 1 << 20

_MASK64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_MANTISSA = 0x007FFFFF
_ONE_BITS = 0x3F800000  # the float32 bit pattern of 1.0


def _splitmix64(x: int) -> int:
    """One round of the splitmix64 finaliser: a bijection on 64-bit ints."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def direction_seed(seed: int, step: int, compartment: int, worker: int, index: int) -> int:
    """The 63-bit seed of one direction, a pure function of its arguments.

    Each argument is folded in through a splitmix64 round, so seeds of
    neighbouring (step, index, ...) tuples are unrelated.
    """
    h = 0
    for part in (seed, step, compartment, worker, index):
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


def step_seeds(seed: int, step: int, compartment: int, worker: int, dim: int) -> list[int]:
    """Seeds of the ``dim`` directions of one compartment at one step."""
    prefix = 0
    for part in (seed, step, compartment, worker):
        prefix = _splitmix64(prefix ^ (int(part) & _MASK64))
    return [_splitmix64(prefix ^ i) >> 1 for i in range(dim)]


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device)


def _draw_row(
    out: torch.Tensor, seed: int, distribution: str, gen: torch.Generator, words: torch.Tensor
) -> None:
    """Fill the 1-D float tensor ``out`` with raw draws from ``seed``.

    ``words`` is an int64 scratch buffer of at least ``ceil(len(out) / 2)``
    entries (gaussian/uniform) or ``ceil(len(out) / 64)`` (sign bits).
    """
    size = out.numel()
    gen.manual_seed(seed)
    if distribution in ("gaussian", "uniform"):
        half = (size + 1) // 2
        w = words[:half].random_(_INT64_MIN, None, generator=gen)
        # Two 32-bit words per int64; 23 mantissa bits each give a float in
        # [1, 2) without an integer-to-float conversion.
        u = w.view(torch.int32).bitwise_and_(_MANTISSA).bitwise_or_(_ONE_BITS)
        u = u.view(torch.float32)
        if distribution == "uniform":
            torch.sub(u[:size].mul_(2.0), 3.0, out=out.view(-1))
            return
        # Box-Muller on the first half (radius) and second half (angle) of
        # the words; 2 - u lies in (0, 1], so the log is finite.
        radius = torch.rsub(u[:half], 2.0).log_().mul_(-2.0).sqrt_()
        angle = u[half:].mul(2.0 * math.pi)
        torch.mul(radius, torch.cos(angle), out=out[:half])
        if size > half:
            torch.mul(radius[: size - half], torch.sin(angle[: size - half]), out=out[half:])
        return
    if distribution in ("rademacher", "bernoulli-official"):
        nwords = (size + 63) // 64
        w = words[:nwords].random_(_INT64_MIN, None, generator=gen)
        table = _sign_table(distribution, out.device, out.dtype)
        idx = w.view(torch.uint8).long()
        signs = table.index_select(0, idx).view(-1)
        out.copy_(signs[:size])
        return
    raise ValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")


_TABLES: dict[tuple[str, str, torch.dtype], torch.Tensor] = {}


def _sign_table(distribution: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """256 x 8 table: row b holds the values of the 8 bits of byte b (LSB first).

    A set bit maps to -1 (rademacher) or -1.5 (bernoulli-official); a clear
    bit to +1 or +0.5.
    """
    key = (distribution, str(device), dtype)
    if key not in _TABLES:
        hi, lo = (1.0, -1.0) if distribution == "rademacher" else (0.5, -1.5)
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        _TABLES[key] = torch.where(bits.bool(), lo, hi).to(device=device, dtype=dtype)
    return _TABLES[key]


def generate_directions(
    seeds: list[int] | tuple[int, ...],
    size: int,
    distribution: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Raw, unscaled directions, one row per seed: ``Tensor[len(seeds), size]``.

    Row i is a pure function of ``seeds[i]``, ``size``, the distribution and
    the device type: the same bits whatever else is drawn with it.
    Gaussian: N(0, 1); uniform: U[-1, 1); rademacher: +-1 with p = 1/2;
    bernoulli-official: +0.5 / -1.5 with p = 1/2 (mean -0.5, variance 1).
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty(len(seeds), size, device=device, dtype=torch.float32)
    gen = _generator(device)
    words = torch.empty((size + 1) // 2, dtype=torch.int64, device=device)
    for i, s in enumerate(seeds):
        _draw_row(out[i], int(s), distribution, gen, words)
    return out.to(dtype)


def default_chunk_size(size: int) -> int:
    """Directions per chunk so that one chunk of float32 rows fits ``L2_BYTES``."""
    return max(1, L2_BYTES // (4 * max(size, 1)))


def project(
    grad: torch.Tensor,
    seeds: list[int] | tuple[int, ...],
    distribution: str,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates ``c = Phi g`` and update ``Phi^T c`` in one chunked pass.

    ``grad`` is a 1-D tensor of length D; ``Phi`` has one row per seed. With
    ``normalize=True`` row i is ``raw_i / sqrt(D)``; otherwise it is raw and
    the update is divided by d = len(seeds). Returns ``(coords[d],
    update[D])`` in ``grad``'s dtype and device. Never holds more than
    ``chunk_size`` rows of Phi. The directions do not depend on
    ``chunk_size``; the sums may differ by float rounding.
    """
    if grad.dim() != 1:
        raise ValueError(f"grad must be 1-D, got shape {tuple(grad.shape)}")
    size = grad.numel()
    dim = len(seeds)
    chunk = chunk_size or default_chunk_size(size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    device = grad.device
    g32 = grad.detach().to(torch.float32)
    coords = torch.empty(dim, dtype=torch.float32, device=device)
    update = torch.zeros(size, dtype=torch.float32, device=device)
    block = torch.empty(min(chunk, dim), size, dtype=torch.float32, device=device)
    words = torch.empty((size + 1) // 2, dtype=torch.int64, device=device)
    gen = _generator(device)
    scale = 1.0 / math.sqrt(size) if normalize else 1.0
    for start in range(0, dim, chunk):
        stop = min(start + chunk, dim)
        rows = block[: stop - start]
        for j in range(start, stop):
            _draw_row(rows[j - start], int(seeds[j]), distribution, gen, words)
        c = torch.mv(rows, g32).mul_(scale)
        coords[start:stop] = c
        # Apply this chunk's share of Phi^T c while the rows are in cache.
        update.addmv_(rows.t(), c, alpha=scale)
    if not normalize and dim > 0:
        update.div_(dim)
    return coords.to(grad.dtype), update.to(grad.dtype)
