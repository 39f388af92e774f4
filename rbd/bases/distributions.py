"""The names of the direction distributions: dense ones drawn value by value from a
seed's splitmix64 stream, structured ones applied as fast transforms."""

from __future__ import annotations

from rbd.spec.choices import DENSE, DISTRIBUTIONS, STRUCTURED

__all__ = ["DENSE", "DISTRIBUTIONS", "STRUCTURED", "check_distribution"]


def check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")
