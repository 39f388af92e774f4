"""Random-bases optimisers (RBD, FPD, NES) with the ``torch.optim`` interface.

All three share the seeded engine in :mod:`rbd.projection`. Parameters of a
param group are seen as one flat vector theta of length D, split into
compartments (contiguous ranges), each with its own independent bases: the
projection is block diagonal.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rbd.projection import (
    DISTRIBUTIONS,
    direction_chunks,
    expand,
    generate_directions,
    project,
    step_seeds,
)

METHODS = ("sgd", "rbd", "fpd", "nes")
# How RBD gets its coordinates c_i = <g, phi_i>: a backward pass and c = Phi g,
# or one forward-mode directional derivative per direction (no backward pass).
COORDINATES = ("backward", "forward")
# Directions per batched jvp in forward mode (chunk_size overrides it).
FORWARD_CHUNK = 25

# Compressed compartments never get fewer directions than this (paper.md).
MIN_COMPARTMENT_DIM = 10
# How a compartment's directions are scaled with normalize=True: by 1/sqrt(n_k) of the
# compartment, or by 1/sqrt(D) of the whole parameter vector, as the authors' code does
# (one `base.normalized = auto_norm(D)` for every compartment, mixins/random_base.py).
COMPARTMENT_SCALES = ("compartment", "network")


@dataclass(frozen=True)
class Compartment:
    """A contiguous range [start, stop) of one param group's flat vector with
    ``dim`` directions; ``index`` (unique across groups) enters the seeds."""

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


def _validate(lr: float, dim: int, distribution: str, seed: int, worker: int) -> None:
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"Invalid dim: {dim} (must be an integer >= 1)")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"Invalid distribution: {distribution!r}; choose one of {DISTRIBUTIONS}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"Invalid seed: {seed} (must be an integer >= 0)")
    if not isinstance(worker, int) or isinstance(worker, bool) or worker < 0:
        raise ValueError(f"Invalid worker: {worker} (must be an integer >= 0)")


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def step_stats(
    dot: float, norm_u: float, norm_g: float, coords: list, tensor_cosines=None
) -> dict[str, float]:
    """A step's statistics: ``grad_corr``, the cosine between the applied update and
    the gradient (from <u, g>, |u|^2, |g|^2); ``grad_corr_tensors``, the mean of the
    per-tensor cosines (the authors' statistic: models/rbd.py records
    ``"correlation/" + weight`` per tensor and reports their mean), NaN when not given;
    and the coordinates' mean and std."""
    c = torch.cat(coords) if coords else torch.zeros(0)
    denom = math.sqrt(norm_u * norm_g)
    cosines = torch.cat(tensor_cosines) if tensor_cosines else torch.zeros(0)
    return {
        "grad_corr": dot / denom if denom > 0 else float("nan"),
        "grad_corr_tensors": float(cosines.mean()) if cosines.numel() else float("nan"),
        "coord_mean": float(c.mean()) if c.numel() else float("nan"),
        "coord_std": float(c.std()) if c.numel() > 1 else float("nan"),
    }


def per_tensor_cosines(update: torch.Tensor, grad: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Cosine between ``update`` and ``grad`` on each tensor's slice of the flat vectors
    (tensors of ``sizes`` entries, in order); tensors where either is zero are left out."""
    out = []
    for u, g in zip(update.split(sizes), grad.split(sizes), strict=True):
        u, g = u.double(), g.double()
        denom = torch.sqrt(torch.dot(u, u) * torch.dot(g, g))
        out.append(torch.where(denom > 0, torch.dot(u, g) / denom, torch.nan))
    cosines = torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)
    return cosines[~cosines.isnan()].float()


class _RandomBases(torch.optim.Optimizer):
    """Shared set-up of RBD and FPD: validation, compartments, the step loop."""

    redraw = True  # RBD draws new bases every step; FPD keeps the step-0 ones

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        dim: int = 250,
        distribution: str = "gaussian",
        seed: int = 0,
        *,
        normalize: bool = True,
        compartments: str = "none",
        compartment_scale: str = "compartment",
        even_dims: bool = False,
        worker: int = 0,
        chunk_size: int | None = None,
        workers: int | None = None,
    ):
        _validate(lr, dim, distribution, seed, worker)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"Invalid chunk_size: {chunk_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"Invalid workers: {workers}")
        if compartment_scale not in COMPARTMENT_SCALES:
            raise ValueError(
                f"Invalid compartment_scale: {compartment_scale!r}; "
                f"choose one of {COMPARTMENT_SCALES}"
            )
        defaults = dict(lr=lr, step=0)
        super().__init__(params, defaults)
        self.dim = dim
        self.distribution = distribution
        self.seed = seed
        self.normalize = bool(normalize)
        self.compartments_spec = compartments
        self.compartment_scale = compartment_scale
        self.even_dims = bool(even_dims)
        self.worker = worker
        self.chunk_size = chunk_size
        self.workers = workers
        self.compartments: list[Compartment] = []
        for gi, group in enumerate(self.param_groups):
            sizes = [p.numel() for p in group["params"]]
            for a, b, k in compartment_ranges(compartments, sizes, dim, even=self.even_dims):
                self.compartments.append(Compartment(gi, len(self.compartments), a, b, k))
        self.stats: dict[str, float] = {}

    def _network_share(self, compartment: Compartment) -> float:
        """n_k / D for ``compartment_scale="network"`` (rows scaled by 1/sqrt(D), D the
        compartment's param group), 1 otherwise: the factor between the two updates."""
        if self.compartment_scale != "network" or not self.normalize:
            return 1.0
        total = sum(c.size for c in self.compartments if c.group == compartment.group)
        return compartment.size / total

    @property
    def num_coordinates(self) -> int:
        """Trainable coordinates per step: sum of d_k over compartments."""
        return sum(c.dim for c in self.compartments)

    @property
    def num_params(self) -> int:
        """D: entries of all parameters handled by this optimiser."""
        return sum(c.size for c in self.compartments)

    @property
    def compression(self) -> float:
        """D / sum d_k."""
        return self.num_params / max(self.num_coordinates, 1)

    def seeds(self, compartment: Compartment, step: int, worker: int | None = None) -> list[int]:
        """Seeds of a compartment's directions at ``step`` (for any worker)."""
        step = step if self.redraw else 0
        worker = self.worker if worker is None else worker
        return step_seeds(self.seed, step, compartment.index, worker, compartment.dim)

    def _project(self, compartment: Compartment, step: int, grad: torch.Tensor):
        coords, update = project(
            grad,
            self.seeds(compartment, step),
            self.distribution,
            normalize=self.normalize,
            chunk_size=self.chunk_size,
            workers=self.workers,
        )
        share = self._network_share(compartment)
        if share != 1.0:
            # Rows / sqrt(D) instead of / sqrt(n_k): c scales by sqrt(n_k / D), the
            # update Phi^T c / sqrt(D) by n_k / D.
            coords, update = coords.mul_(math.sqrt(share)), update.mul_(share)
        return coords, update

    def _record(self, coords: torch.Tensor, compartment: Compartment, lr: float) -> None:
        """Hook for FPD to accumulate its coordinates."""

    def _record_update(self, group: dict, update: torch.Tensor) -> None:
        """Hook for FPD to keep a group's last Phi^T c (before the learning rate)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        dot = norm_u = norm_g = 0.0
        all_coords, cosines = [], []
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            g = _flat(grads)
            update = torch.zeros_like(g)
            for comp in self.compartments:
                if comp.group != gi:
                    continue
                coords, u = self._project(comp, group["step"], g[comp.start : comp.stop])
                update[comp.start : comp.stop] = u
                all_coords.append(coords.float())
                self._record(coords, comp, group["lr"])
            lr = group["lr"]
            offset = 0
            for p in params:
                n = p.numel()
                # Like torch.optim.SGD, a parameter without a gradient stays
                # put (it counts as a zero gradient in the projection).
                if p.grad is not None:
                    p.add_(update[offset : offset + n].view_as(p), alpha=-lr)
                else:
                    update[offset : offset + n] = 0
                offset += n
            self._record_update(group, update)
            group["step"] += 1
            # float32 sums are accurate to ~1e-5 relative here, ample for a cosine.
            dot += lr * float(torch.dot(update, g))
            norm_u += lr * lr * float(torch.dot(update, update))
            norm_g += float(torch.dot(g, g))
            cosines.append(per_tensor_cosines(update, g, [p.numel() for p in params]))
        self.stats = step_stats(dot, norm_u, norm_g, all_coords, cosines)
        return loss


class RBD(_RandomBases):
    r"""Random bases descent (Gressmann et al. 2020).

    At step t, for each compartment k with parameters theta_k (n_k entries)
    and gradient g_k, draw d_k directions phi_i from seeds
    ``(seed, t, k, worker, i)`` and update

    .. math:: c = \Phi g_k, \qquad \theta_k \leftarrow \theta_k - \eta\, \Phi^\top c

    with rows ``phi_i / sqrt(n_k)`` (``normalize=True``) or raw rows and the
    update divided by d_k (``normalize=False``).

    Args:
        params: parameters or param groups, as for ``torch.optim.SGD``.
        lr: learning rate eta (>= 0).
        dim: directions per compartment (for ``compression:<f>`` the d_k are
            set by f instead).
        distribution: one of ``rbd.projection.DISTRIBUTIONS``.
        seed: run seed (>= 0); different seeds give independent bases.
        normalize: scale directions by 1/sqrt(n_k) (default) or the update by 1/d_k.
        compartments: ``"none"``, ``"layer"``, ``"chunk:<n>"`` or ``"compression:<f>"``.
        compartment_scale: with ``normalize``, rows scaled by 1/sqrt(n_k) of their
            compartment (``"compartment"``, default) or by 1/sqrt(D) of the whole
            param group (``"network"``, the authors' code).
        even_dims: round ``compression:<f>`` d_k up to an even number (the authors').
        worker: worker id mixed into the seeds (distributed RBD).
        chunk_size: directions generated at once (default: what fits in L2).
        workers: threads generating directions (default: torch's thread count).

        coordinates: ``"backward"`` (default: ``step()`` after a backward
            pass, c = Phi g from ``p.grad``) or ``"forward"``: c_i is the
            directional derivative of the loss along phi_i, by forward-mode
            differentiation (``torch.func.jvp``, batched over ``chunk_size``
            directions with ``vmap``), without a backward pass.
            ``step(closure)`` then needs ``closure(params) -> loss``, the
            minibatch loss as a function of the parameter tensors in
            param-group order (:func:`module_loss` makes one from a module);
            the update is ``expand(c)``, the same Phi^T c as the default.
            It costs d forward-mode passes (about d x 1.5-3 forward passes)
            against one backward, so it is much slower; ``grad_corr`` is NaN
            unless every parameter has a ``.grad`` to compare with. A module's
            buffers (batch-norm statistics) see every jvp's forward pass.

    After each step, ``stats`` holds ``grad_corr`` (cosine between the applied
    update and the minibatch gradient), ``grad_corr_tensors`` (the mean of that
    cosine taken per parameter tensor, the authors' statistic), ``coord_mean``
    and ``coord_std``.
    """

    def __init__(self, params, *args, coordinates: str = "backward", **kwargs):
        if coordinates not in COORDINATES:
            raise ValueError(f"Invalid coordinates: {coordinates!r}; choose one of {COORDINATES}")
        super().__init__(params, *args, **kwargs)
        self.coordinates = coordinates

    def step(self, closure=None):
        if self.coordinates == "backward":
            return super().step(closure)
        if closure is None:
            raise ValueError(
                "RBD(coordinates='forward').step needs a closure params -> loss "
                "(e.g. rbd.optim.module_loss(model, loss_fn, *inputs))"
            )
        return self._forward_step(closure)

    @torch.no_grad()
    def _forward_step(self, closure):
        params = [p for group in self.param_groups for p in group["params"]]
        primals = tuple(p.detach() for p in params)
        sizes = [p.numel() for p in params]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        group_start = [0]
        for group in self.param_groups:
            group_start.append(group_start[-1] + sum(p.numel() for p in group["params"]))
        device = primals[0].device if primals else torch.device("cpu")
        chunk = self.chunk_size or FORWARD_CHUNK

        def loss_fn(*ps):
            return closure(list(ps))

        def directional(*tangents):
            return torch.func.jvp(loss_fn, primals, tangents)

        batched = torch.func.vmap(directional)
        loss = None
        dot = norm_u = norm_g = 0.0
        all_coords, cosines = [], []
        have_grads = all(p.grad is not None for p in params)
        for gi, group in enumerate(self.param_groups):
            base = group_start[gi]
            update = torch.zeros(group_start[gi + 1] - base, dtype=torch.float32, device=device)
            for comp in self.compartments:
                if comp.group != gi:
                    continue
                seeds = self.seeds(comp, group["step"])
                coords = torch.empty(comp.dim, dtype=torch.float32, device=device)
                share = self._network_share(comp)
                scale = 1.0 / math.sqrt(comp.size / share) if self.normalize else 1.0
                for a, rows in direction_chunks(
                    seeds, comp.size, self.distribution, chunk, device=device
                ):
                    rows.mul_(scale)
                    flat = torch.zeros(len(rows), sum(sizes), device=device)
                    flat[:, base + comp.start : base + comp.stop] = rows
                    tangents = tuple(
                        flat[:, o : o + n].reshape(len(rows), *p.shape).to(p.dtype)
                        for p, o, n in zip(params, starts, sizes, strict=True)
                    )
                    values, derivatives = batched(*tangents)
                    loss = values[0].detach() if loss is None else loss
                    coords[a : a + len(rows)] = derivatives.float()
                update[comp.start : comp.stop] = expand(
                    coords,
                    seeds,
                    comp.size,
                    self.distribution,
                    normalize=self.normalize,
                    chunk_size=self.chunk_size,
                    workers=self.workers,
                )
                if share != 1.0:  # expand scaled Phi^T c by 1/sqrt(n_k); rows need 1/sqrt(D)
                    update[comp.start : comp.stop].mul_(math.sqrt(share))
                all_coords.append(coords)
            lr = group["lr"]
            offset = 0
            for p in group["params"]:
                n = p.numel()
                p.add_(update[offset : offset + n].view_as(p).to(p.dtype), alpha=-lr)
                offset += n
            group["step"] += 1
            if have_grads:
                g = _flat([p.grad for p in group["params"]]).float()
                dot += lr * float(torch.dot(update, g))
                norm_u += lr * lr * float(torch.dot(update, update))
                norm_g += float(torch.dot(g, g))
                cosines.append(per_tensor_cosines(update, g, [p.numel() for p in group["params"]]))
        self.stats = step_stats(dot, norm_u, norm_g, all_coords, cosines)
        return loss


def module_loss(model: torch.nn.Module, loss_fn, *inputs):
    """A closure for ``RBD(coordinates="forward")``: ``params -> loss_fn(model(*inputs))``
    with the module's parameters replaced by ``params`` (in ``model.parameters()``
    order, as an optimiser built on ``model.parameters()`` sees them)."""
    names = [name for name, _ in model.named_parameters()]

    def closure(params):
        output = torch.func.functional_call(model, dict(zip(names, params, strict=True)), inputs)
        return loss_fn(output)

    return closure


class FPD(_RandomBases):
    r"""Fixed projection descent (Li et al. 2018): theta = theta_0 + Phi c.

    Phi (block diagonal over compartments) is drawn once from seeds
    ``(seed, 0, k, worker, i)`` and c, starting at 0, is trained by SGD on
    L(theta_0 + Phi^T c): ``c <- c - lr * Phi g``, so theta moves by
    ``-lr * Phi^T (Phi g)``, the RBD step with bases never re-drawn.
    The directions are regenerated every step unless
    ``cache=True`` keeps them in memory (d_k x n_k floats per compartment).
    With ``normalize=False`` the rows are raw and c's step is divided by d_k,
    so that theta = theta_0 + Phi^T c still holds. The coordinates c are
    kept in the optimiser state (``state_dict()``), one tensor per
    compartment. ``offset=True`` keeps the last Phi^T c for
    :meth:`offset_point`, the authors' forward pass. Other arguments as for
    :class:`RBD`.
    """

    redraw = False

    def __init__(self, params, *args, cache: bool = False, offset: bool = False, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.cache = bool(cache)
        self.offset = bool(offset)
        self._cached: dict[int, torch.Tensor] = {}
        for gi, group in enumerate(self.param_groups):
            comps = [c for c in self.compartments if c.group == gi]
            first = group["params"][0]
            self.state[first]["coordinates"] = [
                torch.zeros(c.dim, dtype=torch.float32, device=first.device) for c in comps
            ]

    def _record_update(self, group: dict, update: torch.Tensor) -> None:
        if self.offset:
            self.state[group["params"][0]]["last_update"] = update.clone()

    @contextmanager
    def offset_point(self):
        """With ``offset=True``, the parameters inside the block are theta + Phi^T c_prev,
        c_prev the last step's coordinate gradient; exactly theta again after it.

        The authors' FPD (``rbd`` with ``reset_coordinates_each_step: False``, models/rbd.py)
        overwrites its coordinate variable with each step's coordinate gradient and runs the
        forward pass at the weights plus P(coordinates): its gradient is taken there. Run the
        forward and backward pass inside this block to train as they did; evaluation stays at
        theta. Without ``offset`` (default) the block changes nothing.
        """
        saved = []
        with torch.no_grad():
            for group in self.param_groups if self.offset else []:
                last = self.state[group["params"][0]].get("last_update")
                if last is None:
                    continue
                at = 0
                for p in group["params"]:
                    n = p.numel()
                    saved.append((p, p.detach().clone()))
                    p.add_(last[at : at + n].view_as(p).to(p.dtype))
                    at += n
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in saved:
                    p.copy_(value)

    @property
    def coordinates(self) -> list[torch.Tensor]:
        """The accumulated coordinates c, one tensor per compartment."""
        out = []
        for group in self.param_groups:
            out.extend(self.state[group["params"][0]]["coordinates"])
        return out

    def directions(self, compartment: Compartment) -> torch.Tensor:
        """The compartment's scaled Phi (d_k x n_k), as used in the update."""
        phi = generate_directions(
            self.seeds(compartment, 0),
            compartment.size,
            self.distribution,
            device=self.param_groups[compartment.group]["params"][0].device,
        )
        share = self._network_share(compartment)
        return phi / math.sqrt(compartment.size / share) if self.normalize else phi

    def _project(self, compartment: Compartment, step: int, grad: torch.Tensor):
        if not self.cache:
            return super()._project(compartment, step, grad)
        phi = self._cached.get(compartment.index)
        if phi is None:
            phi = self._cached[compartment.index] = self.directions(compartment)
        coords = phi @ grad.float()
        update = phi.t() @ coords
        if not self.normalize:
            update /= compartment.dim
        return coords.to(grad.dtype), update.to(grad.dtype)

    def _record(self, coords: torch.Tensor, compartment: Compartment, lr: float) -> None:
        group = self.param_groups[compartment.group]
        comps = [c.index for c in self.compartments if c.group == compartment.group]
        state = self.state[group["params"][0]]["coordinates"]
        k = comps.index(compartment.index)
        step = lr if self.normalize else lr / compartment.dim
        # A new tensor rather than in place: a state_dict() taken earlier
        # keeps its values.
        state[k] = state[k] - step * coords.float()


class NES(torch.optim.Optimizer):
    r"""Natural evolution strategies (Salimans et al. 2017), no gradients.

    Draws a population of d perturbations eps_i from seeds
    ``(seed, t, 0, worker, i)`` (with ``antithetic=True``: d/2 draws and
    their negatives), evaluates the fitness f_i = L(theta + sigma eps_i) with
    the closure, maps the fitness ranks to r_i in [-0.5, 0.5] (highest loss
    +0.5) and updates

    .. math:: \theta \leftarrow \theta - \frac{\eta}{\sigma d} \sum_i r_i \epsilon_i

    ``step(closure)`` needs a closure returning the minibatch loss; it is
    called once at theta and once per offspring, all on the closure's one
    minibatch, under ``torch.no_grad()``. ``step(offspring=closures)``
    instead evaluates offspring i with ``closures[i]``, each on its own
    minibatch, as the authors' NES does (a population of ``len(closures)``
    <= d; the rank weights and the 1/(sigma n) use that n). Only
    ``compartments="none"``.
    With ``normalize=True`` the eps_i are divided by sqrt(D) (default False:
    raw draws, as in the paper). With ``normalize_update=True`` only the update
    is divided by sqrt(D), the perturbations staying sigma eps_i: the authors'
    NES (models/nes.py) applies its update through the same normalised product
    as RBD (``base.normalized = auto_norm(D)``). ``stats`` holds ``loss`` (at theta; with
    ``offspring``, their mean),
    ``coord_mean``/``coord_std`` of the rank weights r_i, and ``grad_corr``
    between the update and ``p.grad`` when every parameter has a gradient
    (NaN otherwise).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        dim: int = 250,
        distribution: str = "gaussian",
        seed: int = 0,
        *,
        sigma: float = 0.01,
        antithetic: bool = False,
        normalize: bool = False,
        normalize_update: bool = False,
        compartments: str = "none",
        worker: int = 0,
    ):
        _validate(lr, dim, distribution, seed, worker)
        if not sigma > 0.0:
            raise ValueError(f"Invalid sigma: {sigma}")
        if antithetic and dim % 2:
            raise ValueError(f"Invalid dim: {dim} (antithetic NES needs an even population)")
        if compartments != "none":
            raise ValueError(f"Invalid compartments: {compartments!r} (NES supports only 'none')")
        super().__init__(params, dict(lr=lr, step=0))
        self.dim = dim
        self.distribution = distribution
        self.seed = seed
        self.sigma = sigma
        self.antithetic = bool(antithetic)
        self.normalize = bool(normalize)
        self.normalize_update = bool(normalize_update)
        self.worker = worker
        self.stats: dict[str, float] = {}

    @property
    def num_coordinates(self) -> int:
        return self.dim

    @property
    def num_params(self) -> int:
        return sum(p.numel() for g in self.param_groups for p in g["params"])

    @property
    def compression(self) -> float:
        return self.num_params / self.dim

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _set(self, params: list[torch.Tensor], flat: torch.Tensor) -> None:
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n

    @torch.no_grad()
    def step(self, closure=None, offspring=None):
        if closure is None and offspring is None:
            raise ValueError(
                "NES.step needs a closure that returns the minibatch loss, "
                "or offspring=[one closure per offspring]"
            )
        population = self.dim if offspring is None else len(offspring)
        if not 0 < population <= self.dim:
            raise ValueError(f"NES.step: {population} offspring closures for dim={self.dim}")
        if self.antithetic and population % 2:
            raise ValueError(f"NES.step: antithetic pairs need an even population: {population}")
        params = self._params()
        group = self.param_groups[0]
        lr, step = group["lr"], group["step"]
        theta = _flat([p.detach() for p in params])
        size = theta.numel()
        draws = population // 2 if self.antithetic else population
        seeds = step_seeds(self.seed, step, 0, self.worker, draws)
        scale = 1.0 / math.sqrt(size) if self.normalize else 1.0
        evaluate = [closure] * population if offspring is None else offspring
        loss = float(closure()) if closure is not None else math.nan
        fitness = torch.empty(population, dtype=torch.float64)
        signs = (1.0, -1.0) if self.antithetic else (1.0,)
        for i, s in enumerate(seeds):
            eps = generate_directions([s], size, self.distribution, device=theta.device)[0]
            eps = eps.mul_(scale).to(theta.dtype)
            for j, sign in enumerate(signs):
                k = i * len(signs) + j
                self._set(params, theta + (sign * self.sigma) * eps)
                fitness[k] = float(evaluate[k]())
        ranks = torch.empty(population, dtype=torch.float64)
        ranks[fitness.argsort(stable=True)] = torch.arange(population, dtype=torch.float64)
        weights = ranks / max(population - 1, 1) - 0.5
        if self.antithetic:
            # eps_i and -eps_i: their weights combine into one per draw.
            w = (weights[0::2] - weights[1::2]).float()
        else:
            w = weights.float()
        direction = torch.zeros_like(theta)
        # The second pass regenerates each eps_i instead of keeping n x D.
        for i, s in enumerate(seeds):
            eps = generate_directions([s], size, self.distribution, device=theta.device)[0]
            direction.add_(eps.to(theta.dtype), alpha=float(w[i]) * scale)
        direction.mul_(1.0 / (self.sigma * population))
        if self.normalize_update:
            direction.mul_(1.0 / math.sqrt(size))
        self._set(params, theta - lr * direction)
        for g in self.param_groups:
            g["step"] += 1
        grads = [p.grad for p in params]
        corr = float("nan")
        if all(gr is not None for gr in grads):
            g = _flat(grads).double()
            denom = float(g.norm() * direction.double().norm())
            if denom > 0:
                corr = float(torch.dot(g, direction.double())) / denom
        if offspring is not None:
            loss = float(fitness.mean())  # the offspring's mean loss, as the authors report
        self.stats = {
            "grad_corr": corr,
            "coord_mean": float(weights.mean()),
            "coord_std": float(weights.std()) if population > 1 else 0.0,
            "loss": loss,
        }
        return loss


def build_optimizer(
    method: str,
    params,
    *,
    lr: float,
    dim: int,
    distribution: str = "gaussian",
    seed: int = 0,
    compartments: str = "none",
    **options,
) -> torch.optim.Optimizer:
    """The optimiser named ``method`` (one of ``METHODS``).

    ``"sgd"`` is ``torch.optim.SGD(params, lr=lr)`` (no momentum; dim,
    distribution, seed and compartments are ignored). Other options
    (``normalize``, ``worker``; RBD/FPD ``chunk_size``, ``workers``; RBD
    ``coordinates``; FPD ``cache``; NES ``sigma``, ``antithetic``) go to the
    class.
    """
    if method == "sgd":
        return torch.optim.SGD(params, lr=lr)
    classes = {"rbd": RBD, "fpd": FPD, "nes": NES}
    if method not in classes:
        raise ValueError(f"Invalid method: {method!r}; choose one of {METHODS}")
    return classes[method](
        params,
        lr=lr,
        dim=dim,
        distribution=distribution,
        seed=seed,
        compartments=compartments,
        **options,
    )
