"""The engine's entry points: directions from seeds, and the one-pass projection
``c = Phi g``, ``Phi^T c`` (and ``Phi^T c`` alone from coordinates) for every
distribution."""

from __future__ import annotations

import math

import torch

from rbd.bases.dense import dense_directions, dense_update
from rbd.bases.distributions import STRUCTURED, check_distribution
from rbd.bases.structured import StructuredBlocks, one_thread, structured_update


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
    check_distribution(distribution)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if distribution in STRUCTURED:
        if not len(seeds):
            return torch.empty(0, size, dtype=dtype, device=device)
        return StructuredBlocks(seeds, size, distribution, device).directions().to(dtype)
    return dense_directions(seeds, size, distribution, device, dtype)


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
    check_distribution(distribution)
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


def project(
    grad: torch.Tensor,
    seeds,
    distribution: str,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates ``c = Phi g`` and update ``Phi^T c`` in one chunked pass.

    ``grad`` is a 1-D tensor of length D; Phi has one row per seed (the rows
    of :func:`generate_directions`). With ``normalize=True`` row i is
    ``raw_i / sqrt(D)``; otherwise it is raw and the update is divided by
    d = len(seeds). Returns ``(coords[d], update[D])`` in ``grad``'s dtype
    and device. Each worker holds one chunk of ``chunk_size`` rows (default:
    what fits in ``L2_BYTES``), never d x D. Chunk j goes to worker
    ``j % threads`` (default: ``torch.get_num_threads()`` on CPU, 1 on other
    devices); for fixed chunk size and threads the result is bit for bit
    reproducible, and other choices change it only by float rounding.

    Structured distributions: c = Phi g and Phi^T c by fast Walsh-Hadamard
    transforms, O(N log N) per block of N rows (N = ``padded_size(D)``)
    whatever d, on one CPU thread; ``chunk_size`` and ``threads`` are
    ignored, and the result is bit for bit the same for any thread count.
    """
    coords, update = _project(grad, seeds, distribution, normalize, chunk_size, threads, True)
    return coords, update


def structured_blocks(seeds, size: int, distribution: str, device=None) -> StructuredBlocks:
    """The drawn factors of a structured Phi (``seeds``, ``size``), kept out of the shared
    workspace: pass them as ``blocks=`` to :func:`project_coordinates` and :func:`expand`
    to apply one Phi several times without drawing it again (the same bits)."""
    check_distribution(distribution)
    if distribution not in STRUCTURED:
        raise ValueError(f"{distribution!r} is not a structured distribution {STRUCTURED}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return StructuredBlocks(seeds, size, distribution, device).kept()


def project_coordinates(
    grad: torch.Tensor,
    seeds,
    distribution: str,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    threads: int | None = None,
    blocks: StructuredBlocks | None = None,
) -> torch.Tensor:
    """``project(grad, seeds, ...)[0]`` without forming the update: half the work where
    the update is built later from other coordinates (a DDP hook expands the workers'
    mean). The same chunks and threads as :func:`project`, so the same bits. ``blocks``:
    a structured Phi's factors from :func:`structured_blocks` for these seeds."""
    return _project(grad, seeds, distribution, normalize, chunk_size, threads, False, blocks)[0]


def _project(grad, seeds, distribution, normalize, chunk_size, threads, with_update, blocks=None):
    """:func:`project`, or with ``with_update=False`` its coordinates alone (update None)."""
    check_distribution(distribution)
    if grad.dim() != 1:
        raise ValueError(f"grad must be 1-D, got shape {tuple(grad.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    size, dim, device = grad.numel(), len(seeds), grad.device
    g = grad.detach().to(torch.float32)
    if distribution in STRUCTURED:
        with one_thread(device):
            if blocks is None and dim:
                blocks = StructuredBlocks(seeds, size, distribution, device)
            coords = blocks.apply(g) if dim else torch.zeros(0, device=device)
            if normalize:
                coords.mul_(1.0 / math.sqrt(size))
            update = None
            if with_update:
                update = structured_update(blocks, coords, size, normalize, device)
    else:
        coords = torch.empty(dim, dtype=torch.float32, device=device)
        update = dense_update(
            seeds,
            size,
            distribution,
            device,
            normalize=normalize,
            chunk_size=chunk_size,
            threads=threads,
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
    threads: int | None = None,
    blocks: StructuredBlocks | None = None,
) -> torch.Tensor:
    """The update ``Phi^T c`` for given coordinates, regenerating Phi from ``seeds``
    (a structured Phi: or taking its factors, ``blocks``, from :func:`structured_blocks`).

    ``coords`` has one entry per seed; returns ``update[size]`` on its device
    in its dtype. The same chunks, threads and summation order as
    :func:`project`, so ``expand(project(g, s)[0], s, len(g))`` equals
    ``project(g, s)[1]`` bit for bit (distributed RBD relies on it: every
    worker rebuilds every other worker's update exactly).
    """
    check_distribution(distribution)
    if coords.dim() != 1 or coords.numel() != len(seeds):
        raise ValueError(f"coords must be 1-D with {len(seeds)} entries, got {tuple(coords.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dim, device = len(seeds), coords.device
    c_all = coords.detach().to(torch.float32)
    if distribution in STRUCTURED:
        with one_thread(device):
            if blocks is None and dim:
                blocks = StructuredBlocks(seeds, size, distribution, device)
            update = structured_update(blocks, c_all, size, normalize, device)
        return update.to(coords.dtype)
    update = dense_update(  # type: ignore[assignment]  # not None: coords are given
        seeds,
        size,
        distribution,
        device,
        normalize=normalize,
        chunk_size=chunk_size,
        threads=threads,
        coords=c_all.contiguous(),
        grad=None,
    )
    return update.to(coords.dtype)
