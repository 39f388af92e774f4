"""Compartments: contiguous ranges of the flat parameter vector, each with its own
independent bases (the projection is block diagonal)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Compressed compartments never get fewer directions than this (paper.md).
MIN_COMPARTMENT_DIM = 10


# How a compartment's directions are scaled with normalize=True: by 1/sqrt(n_k) of the
# compartment, or by 1/sqrt(D) of the whole parameter vector, as the authors' code does
# (one `base.normalized = auto_norm(D)` for every compartment, mixins/random_base.py).
COMPARTMENT_SCALES = ("compartment", "network")


@dataclass(frozen=True)
class Compartment:
    """A contiguous range [start, stop) of one param group's flat vector with ``dim``
    directions. ``index`` enters the seeds: it counts on from the compartments of earlier
    groups with the same seed, so that no two groups share bases, while a group with a
    seed of its own draws exactly what a one-group optimiser with that seed draws."""

    group: int
    index: int
    start: int
    stop: int
    dim: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def compartment_ranges(
    spec: str, sizes: list[int], dim: int, *, even: bool = False
) -> list[tuple[int, int, int]]:
    """Split a flat vector made of tensors with ``sizes`` into compartments.

    Returns ``(start, stop, dim_k)`` triples that cover ``[0, sum(sizes))``
    exactly once, in order. Specs: ``"none"`` (one range, ``dim``),
    ``"layer"`` (one per tensor, ``dim`` each), ``"chunk:<n>"`` (consecutive
    ranges of n entries, the last one shorter, ``dim`` each),
    ``"compression:<f>"`` (one per tensor with ``max(ceil(n_k / f), 10)``,
    rounded up to an even number with ``even=True``, as the authors'
    ``d += d % 2`` in models/rbd.py).
    """
    total = sum(sizes)
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    if spec == "none":
        return [(0, total, dim)] if total else []
    if spec == "layer":
        return [(a, b, dim) for a, b in zip(offsets[:-1], offsets[1:], strict=True) if b > a]
    kind, _, value = spec.partition(":")
    if kind == "chunk":
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"Invalid compartments: {spec!r} (chunk size must be an integer >= 1)")
        return [(a, min(a + n, total), dim) for a in range(0, total, n)]
    if kind == "compression":
        try:
            f = float(value)
        except ValueError:
            f = 0.0
        if not f > 0 or not math.isfinite(f):
            raise ValueError(f"Invalid compartments: {spec!r} (factor must be a number > 0)")
        out = []
        for a, b in zip(offsets[:-1], offsets[1:], strict=True):
            if b > a:
                d_k = max(math.ceil((b - a) / f), MIN_COMPARTMENT_DIM)
                out.append((a, b, d_k + d_k % 2 if even else d_k))
        return out
    raise ValueError(
        f"Invalid compartments: {spec!r}; use 'none', 'layer', 'chunk:<n>' or 'compression:<f>'"
    )
