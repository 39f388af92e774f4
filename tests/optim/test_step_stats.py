"""rbd.optim.step_stats: LazyStats reads once, on first use, and is a read-only mapping;
StepStatistics' numbers are the cosines, means and stds numpy computes here from the
same vectors (float64, written out per tensor and per group)."""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from rbd.optim.step_stats import (
    LazyStats,
    StepStatistics,
    per_tensor_cosines,
    tensor_products,
)


class _Reader:
    """A read function that counts its calls."""

    def __init__(self, values):
        self.values, self.calls = values, 0

    def __call__(self):
        self.calls += 1
        return dict(self.values)


def test_lazy_stats_read_nothing_until_used_then_read_once():
    read = _Reader({"grad_corr": 0.25, "coord_std": 2.0})
    stats = LazyStats(read)
    assert read.calls == 0
    assert stats["grad_corr"] == 0.25
    assert read.calls == 1
    # every other way in reuses the first read
    assert dict(stats) == {"grad_corr": 0.25, "coord_std": 2.0}
    assert len(stats) == 2 and list(stats) == ["grad_corr", "coord_std"]
    assert "coord_std" in stats and "comm_s" not in stats
    assert stats.get("comm_s") is None
    assert "0.25" in repr(stats)
    assert read.calls == 1


@pytest.mark.parametrize(
    "first_use",
    [len, list, repr, dict, lambda s: "x" in s, lambda s: s.get("x")],
    ids=["len", "iter", "repr", "dict", "contains", "get"],
)
def test_any_first_use_reads(first_use):
    read = _Reader({"x": 1.0})
    stats = LazyStats(read)
    first_use(stats)
    assert read.calls == 1
    assert stats["x"] == 1.0 and read.calls == 1


def test_lazy_stats_are_a_read_only_mapping():
    stats = LazyStats(lambda: {"x": 1.0})
    assert isinstance(stats, Mapping)
    with pytest.raises(KeyError):
        stats["y"]
    with pytest.raises(TypeError):
        stats["x"] = 2.0  # type: ignore[index]
    assert stats == {"x": 1.0}


def test_lazy_stats_let_go_of_what_the_read_needed_once_read():
    """The read's tensors (device memory, in a step) are freed after the first read."""

    def reader(held):
        return lambda: {"sum": float(held.sum())}

    tensor = torch.zeros(4)
    ref = weakref.ref(tensor)
    stats = LazyStats(reader(tensor))
    del tensor
    gc.collect()
    assert ref() is not None  # kept until read
    assert stats["sum"] == 0.0
    gc.collect()
    assert ref() is None
    assert stats["sum"] == 0.0


# --- StepStatistics against numpy ----------------------------------------------------------


def _cos(u, g):
    denom = math.sqrt(float(u @ u) * float(g @ g))
    return float(u @ g) / denom if denom > 0 else math.nan


def _vectors(seed, sizes, zero=()):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(sum(sizes), generator=gen)
    g = torch.randn(sum(sizes), generator=gen)
    starts = np.cumsum([0, *sizes])
    for i in zero:  # tensor i's update is zero
        u[starts[i] : starts[i + 1]] = 0
    return u, g


GROUPS = [  # (lr, tensor sizes, seed, tensors whose update is zero)
    (0.5, [6, 3, 10], 1, (1,)),
    (2.0, [4, 7], 2, ()),
]


@pytest.mark.parametrize("on_host", [False, True])
def test_step_statistics_are_the_cosines_and_moments_computed_by_hand(on_host):
    stats = StepStatistics(coordinates_on_host=on_host)
    applied, grads, tensor_cosines = [], [], []
    for lr, sizes, seed, zero in GROUPS:
        u, g = _vectors(seed, sizes, zero)
        stats.add_update(lr, u, g, sizes)
        un, gn = u.double().numpy(), g.double().numpy()
        applied.append(lr * un)  # the update as applied, with its group's rate
        grads.append(gn)
        starts = np.cumsum([0, *sizes])
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            tensor_cosines.append(_cos(un[a:b], gn[a:b]))
    coords = [torch.tensor([1.0, -2.0, 4.0]), torch.tensor([0.5])]
    for c in coords:
        stats.add_coordinates(c)

    got = stats.lazy(comm_s=0.125)
    want_tensors = [c for c in tensor_cosines if not math.isnan(c)]
    assert len(want_tensors) == len(tensor_cosines) - 1  # the zero update is left out
    flat_coords = np.array([1.0, -2.0, 4.0, 0.5])
    assert dict(got) == pytest.approx(
        {
            "grad_corr": _cos(np.concatenate(applied), np.concatenate(grads)),
            "grad_corr_tensors": float(np.mean(want_tensors)),
            "coord_mean": float(flat_coords.mean()),
            "coord_std": float(flat_coords.std(ddof=1)),
            "comm_s": 0.125,
        },
        rel=1e-5,
    )


def test_statistics_of_nothing_are_nan():
    stats = StepStatistics()
    stats.add_update(1.0, torch.zeros(5), torch.ones(5), [5])  # no update: no cosine
    stats.add_coordinates(torch.tensor([3.0]))  # one coordinate: a mean, no std
    got = stats.read()
    assert math.isnan(got["grad_corr"]) and math.isnan(got["grad_corr_tensors"])
    assert got["coord_mean"] == 3.0 and math.isnan(got["coord_std"])
    empty = StepStatistics().read()
    assert all(math.isnan(v) for v in empty.values()), empty


def test_group_sums_come_from_add_group_with_the_rates():
    """``add_group`` takes a group's <u, g>, |u|^2, |g|^2 before its rate; the read
    weighs them as lr <u, g>, lr^2 |u|^2 and |g|^2."""
    stats = StepStatistics()
    stats.add_group(3.0, torch.tensor(2.0), torch.tensor(1.0), torch.tensor(4.0))
    stats.add_group(1.0, torch.tensor(-1.0), torch.tensor(9.0), torch.tensor(5.0))
    dot, uu, gg = 3 * 2 - 1, 9 * 1 + 9, 4 + 5
    assert stats.read()["grad_corr"] == pytest.approx(dot / math.sqrt(uu * gg))


def test_tensor_products_and_cosines_per_slice():
    sizes = [2, 3, 1]
    u = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, -3.0])
    g = torch.tensor([3.0, -1.0, 1.0, 2.0, 2.0, 5.0])
    products = tensor_products(u, g, sizes)
    assert products.dtype == torch.float64 and products.shape == (3, 3)
    assert products.tolist() == [[1.0, 5.0, 10.0], [0.0, 0.0, 9.0], [-15.0, 9.0, 25.0]]
    cosines = per_tensor_cosines(products)
    assert cosines[0] == pytest.approx(1 / math.sqrt(50))
    assert math.isnan(cosines[1])
    assert cosines[2] == pytest.approx(-1.0)
    assert tensor_products(torch.zeros(0), torch.zeros(0), []).shape == (0, 3)
