"""A step's statistics, kept as device tensors until someone reads them.

Turning a GPU tensor into a Python float waits for the GPU (a host sync). The
optimisers compute their statistics with device ops during ``step()`` and
hand back a :class:`LazyStats`, which makes the floats on the first read:
a training loop that never looks never waits, and one that does waits once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import cast

import torch


class LazyStats(Mapping[str, float]):
    """A read-only ``{name: float}`` made by ``read()`` on first access, then kept."""

    def __init__(self, read: Callable[[], dict[str, float]]):
        self._read: Callable[[], dict[str, float]] | None = read
        self._values: dict[str, float] | None = None

    def _materialised(self) -> dict[str, float]:
        if self._values is None:
            read = cast(Callable[[], dict[str, float]], self._read)  # None once read
            self._values, self._read = read(), None
        return self._values

    def __getitem__(self, name: str) -> float:
        return self._materialised()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._materialised())

    def __len__(self) -> int:
        return len(self._materialised())

    def __repr__(self) -> str:
        return f"LazyStats({self._materialised()!r})"


def _statistics(
    dot: float, norm_u: float, norm_g: float, coords: list, tensor_cosines=None
) -> dict[str, float]:
    """A step's statistics: ``grad_corr``, the cosine between the applied update and
    the gradient (from <u, g>, |u|^2, |g|^2); ``grad_corr_tensors``, the mean of the
    per-tensor cosines (the authors' statistic: models/rbd.py records
    ``"correlation/" + weight`` per tensor and reports their mean; NaN entries, tensors
    where either vector is zero, are left out), NaN when not given; and the
    coordinates' mean and std."""
    c = torch.cat(coords) if coords else torch.zeros(0)
    denom = math.sqrt(norm_u * norm_g)
    cosines = torch.cat(tensor_cosines) if tensor_cosines else torch.zeros(0)
    cosines = cosines[~cosines.isnan()].float()
    return {
        "grad_corr": dot / denom if denom > 0 else float("nan"),
        "grad_corr_tensors": float(cosines.mean()) if cosines.numel() else float("nan"),
        "coord_mean": float(c.mean()) if c.numel() else float("nan"),
        "coord_std": float(c.std()) if c.numel() > 1 else float("nan"),
    }


def tensor_products(update: torch.Tensor, grad: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``[len(sizes), 3]`` float64: <u, g>, |u|^2 and |g|^2 on each tensor's slice of the
    flat vectors (tensors of ``sizes`` entries, in order). Device ops only. Each is a
    float32 dot (relative error about 1e-6 at these sizes, ample for a cosine) taken
    once: the per-tensor cosines and, summed, the whole update's cosine come from them,
    without float64 copies of the vectors."""
    rows = [
        torch.stack((torch.dot(u, g), torch.dot(u, u), torch.dot(g, g)))
        for u, g in zip(update.split(sizes), grad.split(sizes), strict=True)
    ]
    if not rows:
        return torch.zeros(0, 3, dtype=torch.float64, device=update.device)
    return torch.stack(rows).double()


def per_tensor_cosines(products: torch.Tensor) -> torch.Tensor:
    """The cosine of each row of :func:`tensor_products`; NaN where either vector is
    zero (dropping the NaNs, a data-dependent shape, is left to the reader)."""
    dot, norm_u, norm_g = products.unbind(1)
    denom = torch.sqrt(norm_u * norm_g)
    return torch.where(denom > 0, dot / denom, torch.nan)


class StepStatistics:
    """Collects, group by group, the device tensors :func:`_statistics` is made from.

    ``add_group`` takes one param group's learning rate and the 0-dim tensors <u, g>,
    |u|^2 and |g|^2 (u the update before the learning rate); the read sums
    ``lr <u, g>``, ``lr^2 |u|^2`` and ``|g|^2`` over groups in Python floats, in
    group order. ``coordinates_on_host`` reduces the coordinates on the CPU.
    """

    def __init__(self, *, coordinates_on_host: bool = False):
        self._groups: list[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._coords: list[torch.Tensor] = []
        self._cosines: list[torch.Tensor] = []
        self._coordinates_on_host = coordinates_on_host

    def add_group(
        self, lr: float, dot: torch.Tensor, norm_u: torch.Tensor, norm_g: torch.Tensor
    ) -> None:
        self._groups.append((lr, dot, norm_u, norm_g))

    def add_coordinates(self, coords: torch.Tensor) -> None:
        self._coords.append(coords)

    def add_cosines(self, cosines: torch.Tensor) -> None:
        self._cosines.append(cosines)

    def add_update(self, lr: float, update: torch.Tensor, grad: torch.Tensor, sizes: list[int]):
        """One param group's update ``u`` (before the learning rate) and gradient, flat,
        over tensors of ``sizes`` entries: its sums and per-tensor cosines."""
        products = tensor_products(update, grad, sizes)
        dot, norm_u, norm_g = products.sum(0).unbind()
        self.add_group(lr, dot, norm_u, norm_g)
        self.add_cosines(per_tensor_cosines(products))

    def lazy(self, **extra: float) -> LazyStats:
        """The statistics, read on first access; ``extra`` host floats (timings) added."""
        return LazyStats(lambda: self.read() | extra)

    def read(self) -> dict[str, float]:
        dot = norm_u = norm_g = 0.0
        for lr, d, uu, gg in self._groups:
            dot += lr * float(d)
            norm_u += lr * lr * float(uu)
            norm_g += float(gg)
        coords = self._coords
        if self._coordinates_on_host:
            coords = [c.cpu() for c in coords]
        return _statistics(dot, norm_u, norm_g, coords, self._cosines)
