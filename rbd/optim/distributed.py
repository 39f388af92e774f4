"""Distributed RBD on ``torch.distributed``: workers exchange only coordinates.

W workers (processes) train one model. At every step each worker takes its
own minibatch of ``batch_size`` images (the global batch is W x batch_size:
the same epoch permutation everywhere, split into consecutive global batches,
worker w taking the w-th of W equal parts), computes its gradient g_w and its
coordinates c_w = Phi_w g_w in its own bases, and sends c_w in one
``all_gather``. Every worker then regenerates the other workers' directions
from their seeds and applies the same total update

    theta <- theta - lr * sum_w Phi_w^T c_w        (``combine="sum"``, default)

summed in rank order, so that the parameters stay bit for bit identical.
``sum`` is what the authors' Ray code does (each worker's update is applied
with the full learning rate); with it W workers with d directions each make
one step that is, in expectation, an RBD step with W x d directions, and a
run keeps its accuracy per epoch although it takes W times fewer steps.
``combine="mean"`` divides by W (the learning rate of a one-worker run then
means the same step length).

Sharing of the bases (``sharing``):

- ``"worker"``: worker w draws d directions from seeds
  ``(seed, step, compartment, w, i)``; W x d numbers cross the network.
- ``"shared"``: every worker uses worker 0's directions, so only the summed
  (or averaged) coordinates need expanding: with ``combine="mean"`` this is
  exactly single-process RBD on the W x batch_size global batch.
- ``"split"``: the d directions of worker 0 are split across workers (worker
  w takes indices ``w*d//W .. (w+1)*d//W``), so the W workers together make
  one step with d directions and each regenerates d, not W x d.

Batch-norm running statistics (buffers, not parameters) see only the
worker's own images; they are averaged over the workers at the end of each
epoch, before evaluation and checkpointing. Once per epoch the workers also
compare a checksum of parameters and buffers (sum and sum of squares in
float64) and stop with an error if any worker differs from worker 0.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.distributed as dist

from rbd.bases import expand, project
from rbd.optim.compartments import Compartment
from rbd.optim.rbd import RBD
from rbd.optim.seeded import add_flat
from rbd.optim.step_stats import StepStatistics
from rbd.spec.choices import COMBINE, SHARING

log = logging.getLogger(__name__)

# Per-step means over an epoch (seconds, worker 0), dropped like
# rbd.train.loop.EPOCH_TIME_COLUMNS when runs are compared.
STEP_TIME_COLUMNS = ("step_s", "compute_s", "regen_s", "comm_s")
BYTES_PER_NUMBER = 4  # float32 coordinates and gradients


class Workers:
    """This process's place among the W workers of a distributed run (its process group),
    and the one collective the optimiser needs. With ``size == 1`` nothing is communicated
    (no process group is needed)."""

    def __init__(self, rank: int, size: int, device: torch.device):
        if not 0 <= rank < size:
            raise ValueError(f"Invalid rank {rank} for {size} workers")
        self.rank, self.size, self.device = rank, size, torch.device(device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``Tensor[size, *tensor.shape]``, row w from worker w."""
        if self.size == 1:
            return tensor.unsqueeze(0).clone()
        # NCCL gathers only device tensors; the result comes back where it was.
        local = tensor.to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local)
        return torch.stack(parts).to(tensor.device)


class DistributedRBD(RBD):
    r"""RBD over W workers that exchange only their coordinates (see the module docstring).

    Args:
        params, lr, dim, distribution, seed, normalize, compartments,
            chunk_size, threads: as for :class:`rbd.optim.RBD` (update_rule "sgd" only).
        workers: this process's :class:`Workers`.
        sharing: ``"worker"`` (default), ``"shared"`` or ``"split"``.
        combine: ``"sum"`` (default) or ``"mean"`` of the workers' updates.
        loss_limit: a minibatch loss above this (or not finite), passed to
            ``step(loss=...)``, is sent as NaN coordinates, so that every
            worker sees it and stops (``diverged`` becomes True).

    Every parameter gets the total update, whether or not it has a gradient
    here (a missing gradient counts as zero): the workers must stay identical.
    After each step, ``stats`` holds ``grad_corr`` (cosine between the total
    update and this worker's gradient), ``coord_mean``, ``coord_std`` (over
    all workers' coordinates), ``comm_s`` and ``regen_s`` (seconds spent in the
    ``all_gather`` and in regenerating the other workers' directions); the
    first three are read from the device on first access.
    """

    takes_loss = True

    def __init__(
        self,
        params,
        workers: Workers,
        *,
        sharing: str = "worker",
        combine: str = "sum",
        loss_limit: float = math.inf,
        **kwargs,
    ):
        if sharing not in SHARING:
            raise ValueError(f"Invalid sharing: {sharing!r}; choose one of {SHARING}")
        if combine not in COMBINE:
            raise ValueError(f"Invalid combine: {combine!r}; choose one of {COMBINE}")
        if kwargs.get("update_rule", "sgd") != "sgd":
            raise ValueError(
                f"Invalid update_rule: {kwargs['update_rule']!r}; distributed RBD combines "
                "the workers' coordinates as SGD steps (update_rule='sgd')"
            )
        kwargs.setdefault("worker", workers.rank)
        super().__init__(params, **kwargs)
        self.workers, self.sharing, self.combine = workers, sharing, combine
        self.loss_limit = loss_limit
        self.diverged = False
        if self.threads is None and self.param_groups[0]["params"][0].device.type != "cpu":
            self.threads = 1
        if self.threads is None:
            # Threads per projection fix the summation order: every worker must
            # use the same count to rebuild the others' updates bit for bit.
            threads = torch.tensor([torch.get_num_threads()])
            self.threads = int(workers.all_gather(threads).min())

    def _check_group(self, group, others) -> None:
        super()._check_group(group, others)
        network = group["compartment_scale"] == "network" and group["normalize"]
        if network and len(self._ranges(group)) > 1:
            raise ValueError(
                "Invalid compartment_scale: distributed RBD scales each compartment by its own "
                "size; use compartment_scale='compartment'"
            )

    def share(self, compartment: Compartment, worker: int) -> tuple[int, int, int]:
        """(seed worker id, first, last + 1 direction index) of ``worker``'s directions."""
        if self.sharing == "worker":
            return worker, 0, compartment.dim
        if self.sharing == "shared":
            return 0, 0, compartment.dim
        w, n, d = worker, self.workers.size, compartment.dim
        return 0, w * d // n, (w + 1) * d // n

    def _width(self, compartment: Compartment) -> int:
        """Slots for one compartment in each worker's message."""
        return (
            math.ceil(compartment.dim / self.workers.size)
            if self.sharing == "split"
            else compartment.dim
        )

    @property
    def coordinates_per_worker(self) -> int:
        return sum(self._width(c) for c in self.compartments)

    @property
    def bytes_per_step(self) -> int:
        """Size of the gathered coordinates: W x (numbers per worker) x 4 bytes."""
        return self.workers.size * self.coordinates_per_worker * BYTES_PER_NUMBER

    def _seeds_of(self, compartment: Compartment, step: int, worker: int) -> list[int]:
        seed_worker, lo, hi = self.share(compartment, worker)
        return self.seeds(compartment, step, seed_worker)[lo:hi]

    def _expand_worker(self, coords, compartment, step, worker) -> torch.Tensor:
        u = expand(
            coords,
            self._seeds_of(compartment, step, worker),
            compartment.size,
            self.param_groups[compartment.group]["distribution"],
            normalize=self.param_groups[compartment.group]["normalize"],
            chunk_size=self.chunk_size,
            threads=self.threads,
        )
        return self._rescale(u, len(coords), compartment)

    def _rescale(self, update, count, compartment) -> torch.Tensor:
        # Unnormalised updates are divided by the directions used (the engine
        # divides by this worker's share); a split step has d in all.
        normalize = self.param_groups[compartment.group]["normalize"]
        if not normalize and self.sharing == "split" and count:
            update = update * (count / compartment.dim)
        return update

    @torch.no_grad()
    def step(self, closure=None, *, loss: float | None = None):
        if closure is not None:
            with torch.enable_grad():
                loss = float(closure())
        device = self.param_groups[0]["params"][0].device
        rank, size = self.workers.rank, self.workers.size
        widths = [self._width(c) for c in self.compartments]
        offsets = [sum(widths[:k]) for k in range(len(widths))]
        message = torch.zeros(sum(widths), dtype=torch.float32, device=device)
        grads, own = [], {}
        for gi, group in enumerate(self.param_groups):
            g = _flat_grads(group["params"])
            grads.append(g)
            for k, comp in enumerate(self.compartments):
                if comp.group != gi:
                    continue
                seeds = self._seeds_of(comp, group["step"], rank)
                coords, u = project(
                    g[comp.start : comp.stop],
                    seeds,
                    group["distribution"],
                    normalize=group["normalize"],
                    chunk_size=self.chunk_size,
                    threads=self.threads,
                )
                message[offsets[k] : offsets[k] + len(seeds)] = coords
                own[k] = self._rescale(u, len(seeds), comp)
        if loss is not None and not (math.isfinite(loss) and loss <= self.loss_limit):
            message.fill_(math.nan)

        _sync(device)
        start = time.perf_counter()
        gathered = self.workers.all_gather(message)  # [W, numbers per worker]
        _sync(device)
        comm_s = time.perf_counter() - start
        if not bool(torch.isfinite(gathered).all()):
            self.diverged = True
            self.stats = {"comm_s": comm_s, "regen_s": 0.0}
            return loss

        start = time.perf_counter()
        stats = StepStatistics(coordinates_on_host=True)
        for gi, group in enumerate(self.param_groups):
            g, step, lr = grads[gi], group["step"], group["lr"]
            update = torch.zeros_like(g)
            for k, comp in enumerate(self.compartments):
                if comp.group != gi:
                    continue
                a = offsets[k]
                if self.sharing == "shared":
                    total = gathered[0, a : a + comp.dim].clone()
                    for w in range(1, size):
                        total.add_(gathered[w, a : a + comp.dim])
                    u = self._expand_worker(total, comp, step, 0)
                else:
                    u = None  # type: ignore[assignment]  # a Tensor after the first worker
                    for w in range(size):
                        _, lo, hi = self.share(comp, w)
                        part = (
                            own[k]
                            if w == rank
                            else self._expand_worker(gathered[w, a : a + hi - lo], comp, step, w)
                        )
                        u = part if u is None else u.add_(part)
                if self.combine == "mean":
                    u = u.div_(size)
                update[comp.start : comp.stop] = u
            add_flat(group["params"], update, -lr)
            group["step"] += 1
            u, g = update.double(), g.double()
            stats.add_group(lr, torch.dot(u, g), u.square().sum(), g.square().sum())
        _sync(device)
        regen_s = time.perf_counter() - start
        stats.add_coordinates(_used(gathered, self, widths, offsets))
        self.stats = stats.lazy(comm_s=comm_s, regen_s=regen_s)
        return loss


def _flat_grads(params) -> torch.Tensor:
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    return torch.cat(parts) if parts else torch.zeros(0)


def _used(gathered, opt: DistributedRBD, widths, offsets) -> torch.Tensor:
    """All workers' coordinates without the padding slots."""
    parts = []
    for w in range(opt.workers.size):
        for k, comp in enumerate(opt.compartments):
            _, lo, hi = opt.share(comp, w)
            parts.append(gathered[w, offsets[k] : offsets[k] + hi - lo])
    return torch.cat(parts).float() if parts else torch.zeros(0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
