"""Random-bases optimisers (RBD, FPD, NES) with the ``torch.optim`` interface.

All three share the seeded engine in :mod:`rbd.projection`. Parameters of a
param group are seen as one flat vector theta of length D, split into
compartments (contiguous ranges), each with its own independent bases: the
projection is block diagonal.

As in ``torch.optim.SGD``, every hyperparameter, including those that fix the
random bases (``dim``, ``seed``, ``distribution``, ``normalize``,
``compartments``, ...), is a param-group setting whose default comes from the
constructor; a group added with ``add_param_group`` is validated and trained
by the next step, and ``state_dict()`` carries the settings, so that loading
one saved with other bases is an error rather than a silent change of run.
Statistics stay on the device until read (:mod:`rbd.step_stats`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
from rbd.step_stats import LazyStats, UpdateStats

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


def _check_integer(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {low})")


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _copy_flat(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy consecutive slices of ``flat`` into ``params``."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


class _SeededOptimizer(torch.optim.Optimizer):
    """What RBD, FPD and NES share as ``torch.optim`` optimisers: every hyperparameter is
    a param-group setting (defaults from the constructor), validated whenever a group is
    added, and a ``state_dict`` must agree with the optimiser on the settings that fix
    the random bases before it is loaded. The worker id and the settings that say how a
    step is computed (threads, chunks) are attributes."""

    # Settings that fix a group's random bases (and their scale): continuing from a
    # state_dict saved with other values would silently be another run.
    bases_settings: tuple[str, ...] = ("dim", "distribution", "seed", "normalize")
    # Settings kept as bools whatever truthy value they are given.
    flag_settings: tuple[str, ...] = ("normalize",)

    def __init__(self, params, defaults: dict, worker: int):
        _check_integer("worker", worker, 0)
        # This process's id among distributed workers, mixed into every seed: an attribute,
        # not a group setting, so that all workers load the one checkpoint worker 0 wrote.
        self.worker = worker
        for name in self.flag_settings:
            defaults[name] = bool(defaults[name])
        self._check_group(defaults, [])
        # Mapping of float statistics of the last step, read lazily (rbd.step_stats).
        self.stats: Mapping[str, float] = {}
        super().__init__(params, defaults)

    def __getstate__(self) -> dict:
        """What ``copy.deepcopy`` and ``pickle`` keep. torch.optim keeps defaults, state and
        param groups only; the settings these optimisers hold as attributes (worker,
        threads, chunks, compartments, coordinates, cached bases) travel too, so a copy
        steps exactly as the original. Hooks stay behind, as torch.optim leaves them; the
        last step's statistics travel as plain floats."""
        state = super().__getstate__()
        own = {
            name: value
            for name, value in self.__dict__.items()
            if name not in state and not name.startswith("_optimizer_")
        }
        own["stats"] = dict(self.stats)
        return {**own, **state}

    def _check_group(self, group: Mapping, others: list[dict]) -> None:
        """Raise a ValueError naming the first invalid setting of ``group`` (its
        ``params`` may be absent; ``others`` are the groups already there)."""
        lr = group["lr"]
        if not lr >= 0.0:
            raise ValueError(f"Invalid lr: {lr} (the learning rate must be >= 0)")
        _check_integer("dim", group["dim"], 1)
        if group["distribution"] not in DISTRIBUTIONS:
            raise ValueError(
                f"Invalid distribution: {group['distribution']!r}; choose one of {DISTRIBUTIONS}"
            )
        _check_integer("seed", group["seed"], 0)

    def add_param_group(self, param_group: dict) -> None:
        """As ``torch.optim.Optimizer.add_param_group``, then the group's settings are
        validated (a ValueError leaves the optimiser as it was)."""
        super().add_param_group(param_group)
        group, others = self.param_groups[-1], self.param_groups[:-1]
        for name in self.flag_settings:
            group[name] = bool(group[name])
        try:
            self._check_group(group, others)
        except ValueError as error:
            self.param_groups.pop()
            if others:
                raise ValueError(f"{error} (param group {len(others)})") from None
            raise

    def _checked_groups(self, state_dict: dict) -> list[dict]:
        """The saved param groups, after checking that each agrees with this optimiser's
        on ``bases_settings`` (a ValueError names the first that differs); settings a
        state_dict from before they were saved lacks are taken from this optimiser."""
        saved_groups = [dict(saved) for saved in state_dict["param_groups"]]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"Invalid state_dict: it has {len(saved_groups)} param groups, this optimiser "
                f"has {len(self.param_groups)}"
            )
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            for name in self.bases_settings:
                if name in saved and saved[name] != group[name]:
                    raise ValueError(
                        f"Invalid state_dict: param group {index} was saved with "
                        f"{name}={saved[name]!r}, this optimiser has {name}={group[name]!r}; "
                        "it would continue on other random bases"
                    )
            for name in self.defaults:
                saved.setdefault(name, group[name])
        return saved_groups

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, refusing a state_dict saved with
        other random bases (another seed, dim, distribution, ...: a ValueError names it)."""
        groups = self._checked_groups(state_dict)
        super().load_state_dict({**state_dict, "param_groups": groups})


class _RandomBases(_SeededOptimizer):
    """Shared set-up of RBD and FPD: settings, compartments, the step loop."""

    redraw = True  # RBD draws new bases every step; FPD keeps the step-0 ones
    bases_settings = (
        *_SeededOptimizer.bases_settings,
        "compartments",
        "compartment_scale",
        "even_dims",
    )
    flag_settings = ("normalize", "even_dims")

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
        **group_defaults,
    ):
        if chunk_size is not None:
            _check_integer("chunk_size", chunk_size, 1)
        if workers is not None:
            _check_integer("workers", workers, 1)
        # How a step is computed, not what it computes (beyond float rounding): attributes.
        self.chunk_size = chunk_size
        self.workers = workers
        self.compartments: list[Compartment] = []
        defaults = dict(
            lr=lr,
            dim=dim,
            distribution=distribution,
            seed=seed,
            normalize=normalize,
            compartments=compartments,
            compartment_scale=compartment_scale,
            even_dims=even_dims,
            **group_defaults,
            step=0,
        )
        super().__init__(params, defaults, worker)

    def _check_group(self, group: Mapping, others: list[dict]) -> None:
        super()._check_group(group, others)
        if not isinstance(group["compartments"], str):
            raise ValueError(
                f"Invalid compartments: {group['compartments']!r}; "
                "use 'none', 'layer', 'chunk:<n>' or 'compression:<f>'"
            )
        if group["compartment_scale"] not in COMPARTMENT_SCALES:
            raise ValueError(
                f"Invalid compartment_scale: {group['compartment_scale']!r}; "
                f"choose one of {COMPARTMENT_SCALES}"
            )
        self._ranges(group)  # raises on a malformed compartments spec

    @staticmethod
    def _ranges(group: Mapping) -> list[tuple[int, int, int]]:
        sizes = [p.numel() for p in group.get("params", [])]
        return compartment_ranges(
            group["compartments"], sizes, group["dim"], even=group["even_dims"]
        )

    def add_param_group(self, param_group: dict) -> None:
        """As ``torch.optim.Optimizer.add_param_group``: the group's settings are
        validated and its compartments built, so the next step trains it."""
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        first = sum(
            1 for c in self.compartments if self.param_groups[c.group]["seed"] == group["seed"]
        )
        for k, (a, b, d) in enumerate(self._ranges(group)):
            self.compartments.append(Compartment(index, first + k, a, b, d))

    def compartments_of(self, group: int) -> list[Compartment]:
        """The compartments of param group ``group``, in order."""
        return [c for c in self.compartments if c.group == group]

    def _network_share(self, compartment: Compartment) -> float:
        """n_k / D for ``compartment_scale="network"`` (rows scaled by 1/sqrt(D), D the
        compartment's param group), 1 otherwise: the factor between the two updates."""
        group = self.param_groups[compartment.group]
        if group["compartment_scale"] != "network" or not group["normalize"]:
            return 1.0
        total = sum(c.size for c in self.compartments_of(compartment.group))
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
        """Seeds of a compartment's directions at ``step`` (for any worker):
        ``(its group's seed, step, index, worker, i)``."""
        group = self.param_groups[compartment.group]
        step = step if self.redraw else 0
        worker = self.worker if worker is None else worker
        return step_seeds(group["seed"], step, compartment.index, worker, compartment.dim)

    def _project(self, compartment: Compartment, step: int, grad: torch.Tensor):
        group = self.param_groups[compartment.group]
        coords, update = project(
            grad,
            self.seeds(compartment, step),
            group["distribution"],
            normalize=group["normalize"],
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
        stats = UpdateStats()
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            g = _flat(grads)
            update = torch.zeros_like(g)
            for comp in self.compartments_of(gi):
                coords, u = self._project(comp, group["step"], g[comp.start : comp.stop])
                update[comp.start : comp.stop] = u
                stats.add_coordinates(coords.float())
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
            stats.add_update(lr, update, g, [p.numel() for p in params])
        self.stats = stats.lazy()
        return loss


class RBD(_RandomBases):
    r"""Random bases descent (Gressmann et al. 2020).

    At step t, for each compartment k with parameters theta_k (n_k entries)
    and gradient g_k, draw d_k directions phi_i from seeds
    ``(seed, t, k, worker, i)`` and update

    .. math:: c = \Phi g_k, \qquad \theta_k \leftarrow \theta_k - \eta\, \Phi^\top c

    with rows ``phi_i / sqrt(n_k)`` (``normalize=True``) or raw rows and the
    update divided by d_k (``normalize=False``).

    As in ``torch.optim.SGD``, ``lr``, ``dim``, ``distribution``, ``seed``,
    ``normalize``, ``compartments``, ``compartment_scale`` and ``even_dims``
    are param-group settings (the arguments are their defaults):
    each group has its own compartments, seeds and step counter t. Compartment
    indices k count on from earlier groups with the same seed, so groups
    never share bases, and a group with a seed of its own is updated exactly
    as a one-group optimiser with that seed would update it.
    ``state_dict()`` carries the settings; loading one saved with other
    bases-defining settings raises a ValueError naming the setting.

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
        worker: this process's worker id, mixed into the seeds (distributed RBD);
            an attribute, so that every worker loads the same state_dict.
        chunk_size: directions generated at once (default: what fits in L2).
        workers: threads generating directions (default: torch's thread count).
            ``chunk_size`` and ``workers`` say how a step is computed, not what
            (beyond float rounding): they are attributes of the optimiser.

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
            An attribute, like ``chunk_size``.

    After each step, ``stats`` maps ``grad_corr`` (cosine between the applied
    update and the minibatch gradient), ``grad_corr_tensors`` (the mean of that
    cosine taken per parameter tensor, the authors' statistic), ``coord_mean``
    and ``coord_std`` to floats. ``step()`` computes them on the device and never
    waits for it; the first read of ``stats`` does (one host sync).
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
        stats = UpdateStats()
        have_grads = all(p.grad is not None for p in params)
        for gi, group in enumerate(self.param_groups):
            base = group_start[gi]
            update = torch.zeros(group_start[gi + 1] - base, dtype=torch.float32, device=device)
            for comp in self.compartments_of(gi):
                seeds = self.seeds(comp, group["step"])
                coords = torch.empty(comp.dim, dtype=torch.float32, device=device)
                share = self._network_share(comp)
                scale = 1.0 / math.sqrt(comp.size / share) if group["normalize"] else 1.0
                for a, rows in direction_chunks(
                    seeds, comp.size, group["distribution"], chunk, device=device
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
                    group["distribution"],
                    normalize=group["normalize"],
                    chunk_size=self.chunk_size,
                    workers=self.workers,
                )
                if share != 1.0:  # expand scaled Phi^T c by 1/sqrt(n_k); rows need 1/sqrt(D)
                    update[comp.start : comp.stop].mul_(math.sqrt(share))
                stats.add_coordinates(coords)
            lr = group["lr"]
            offset = 0
            for p in group["params"]:
                n = p.numel()
                p.add_(update[offset : offset + n].view_as(p).to(p.dtype), alpha=-lr)
                offset += n
            group["step"] += 1
            if have_grads:
                g = _flat([p.grad for p in group["params"]]).float()
                stats.add_update(lr, update, g, [p.numel() for p in group["params"]])
        self.stats = stats.lazy()
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
    r"""Fixed projection descent (Li et al. 2018): theta = theta_0 + Phi^T c.

    Phi (block diagonal over compartments) is drawn once from seeds
    ``(seed, 0, k, worker, i)``; c, starting at 0, is trained by SGD on
    L(theta_0 + Phi^T c), so that at step t, with g the gradient at theta_t,

    .. math:: c \leftarrow c - \eta\, \Phi g, \qquad
              \theta \leftarrow \theta - \eta\, \Phi^\top \Phi g

    the RBD step with bases never re-drawn. With ``normalize=False`` the rows
    are raw and c's step is divided by d_k, so that theta = theta_0 + Phi^T c
    still holds. The coordinates c are kept in the optimiser state
    (``state_dict()``), one tensor per compartment; loading a state_dict saved
    with other bases (seed, dim, distribution, compartments, ...) raises a
    ValueError naming the setting. The directions are regenerated every step
    unless ``cache=True`` (an attribute, like ``chunk_size``) keeps them in
    memory (d_k x n_k floats per compartment). ``offset=True`` (a param-group
    setting) keeps the group's last Phi^T c for :meth:`offset_point`, the
    authors' forward pass. Other arguments, group settings and ``stats`` as
    for :class:`RBD`.
    """

    redraw = False
    flag_settings = (*_RandomBases.flag_settings, "offset")

    def __init__(self, params, *args, cache: bool = False, offset: bool = False, **kwargs):
        self.cache = bool(cache)
        self._cached: dict[Compartment, torch.Tensor] = {}
        super().__init__(params, *args, offset=offset, **kwargs)

    def add_param_group(self, param_group: dict) -> None:
        """As for :class:`RBD`, and the group's coordinates c start at 0."""
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        params = self.param_groups[index]["params"]
        if params:
            self.state[params[0]]["coordinates"] = [
                torch.zeros(c.dim, dtype=torch.float32, device=params[0].device)
                for c in self.compartments_of(index)
            ]

    def load_state_dict(self, state_dict: dict) -> None:
        """As :meth:`RBD.load_state_dict`; the saved coordinates must also fit the
        compartments (a state_dict from before the settings were saved is checked so)."""
        for index, saved in enumerate(self._checked_groups(state_dict)):
            if not saved["params"]:
                continue
            coords = state_dict["state"].get(saved["params"][0], {}).get("coordinates")
            got = None if coords is None else [c.numel() for c in coords]
            want = [c.dim for c in self.compartments_of(index)]
            if got != want:
                raise ValueError(
                    f"Invalid state_dict: param group {index} holds FPD coordinates of sizes "
                    f"{got}, this optimiser's compartments have dim {want}; it was saved "
                    "with another dim or compartments"
                )
        super().load_state_dict(state_dict)

    def _record_update(self, group: dict, update: torch.Tensor) -> None:
        if group["offset"]:
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
            for group in self.param_groups:
                last = self.state[group["params"][0]].get("last_update")
                if not group["offset"] or last is None:
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
        group = self.param_groups[compartment.group]
        phi = generate_directions(
            self.seeds(compartment, 0),
            compartment.size,
            group["distribution"],
            device=group["params"][0].device,
        )
        share = self._network_share(compartment)
        return phi / math.sqrt(compartment.size / share) if group["normalize"] else phi

    def _project(self, compartment: Compartment, step: int, grad: torch.Tensor):
        if not self.cache:
            return super()._project(compartment, step, grad)
        phi = self._cached.get(compartment)
        if phi is None:
            phi = self._cached[compartment] = self.directions(compartment)
        coords = phi @ grad.float()
        update = phi.t() @ coords
        if not self.param_groups[compartment.group]["normalize"]:
            update /= compartment.dim
        return coords.to(grad.dtype), update.to(grad.dtype)

    def _record(self, coords: torch.Tensor, compartment: Compartment, lr: float) -> None:
        group = self.param_groups[compartment.group]
        state = self.state[group["params"][0]]["coordinates"]
        k = self.compartments_of(compartment.group).index(compartment)
        step = lr if group["normalize"] else lr / compartment.dim
        # A new tensor rather than in place: a state_dict() taken earlier
        # keeps its values.
        state[k] = state[k] - step * coords.float()


@dataclass
class _NESGroup:
    """One param group's part of an NES step: its flat theta and its perturbations."""

    params: list[torch.Tensor]
    theta: torch.Tensor
    seeds: list[int]
    distribution: str
    scale: float
    sigma: float
    lr: float
    normalize_update: bool

    def raw(self, i: int) -> torch.Tensor:
        """The unscaled eps_i, regenerated from its seed."""
        return generate_directions(
            [self.seeds[i]], self.theta.numel(), self.distribution, device=self.theta.device
        )[0]


class NES(_SeededOptimizer):
    r"""Natural evolution strategies (Salimans et al. 2017), no gradients.

    Draws a population of d perturbations eps_i from seeds
    ``(seed, t, 0, worker, i)`` (with ``antithetic=True``: d/2 draws and
    their negatives), evaluates the fitness f_i = L(theta + sigma eps_i) with
    the closure, maps the fitness ranks to r_i in [-0.5, 0.5] (highest loss
    +0.5) and updates

    .. math:: \theta \leftarrow \theta - \frac{\eta}{\sigma d} \sum_i r_i \epsilon_i

    ``step(closure)`` needs a closure returning the minibatch loss; it is
    called once at theta and once per offspring, all on the closure's one
    minibatch, under ``torch.no_grad()``, and its loss at theta is returned.
    ``step(offspring=closures)`` instead evaluates offspring i with
    ``closures[i]``, each on its own minibatch, as the authors' NES does (a
    population of ``len(closures)`` <= d; the rank weights and the
    1/(sigma n) use that n), and returns the offspring's mean loss (a tensor).
    Only ``compartments="none"``.
    With ``normalize=True`` the eps_i are divided by sqrt(D) (default False:
    raw draws, as in the paper). With ``normalize_update=True`` only the update
    is divided by sqrt(D), the perturbations staying sigma eps_i: the authors'
    NES (models/nes.py) applies its update through the same normalised product
    as RBD (``base.normalized = auto_norm(D)``).

    Every setting is a param-group setting, as for :class:`RBD`. Groups share
    one population (one ``dim`` and ``antithetic``; the perturbation of
    offspring i is eps_i of every group at once, group j's drawn from its own
    seed and index, and scaled by its own sigma_j), each group moving
    by its own eta_j / (sigma_j d) sum_i r_i eps_i. The fitness and ranks stay
    on the device; each step reads the d rank weights to the host once (the
    update adds eps_i with its weight as a scalar).

    ``stats`` maps ``loss`` (at theta; with ``offspring``, their mean),
    ``coord_mean``/``coord_std`` of the rank weights r_i, and ``grad_corr``
    between the update and ``p.grad`` when every parameter has a gradient
    (NaN otherwise) to floats, read on first access.
    """

    bases_settings = (*_SeededOptimizer.bases_settings, "antithetic")
    flag_settings = ("antithetic", "normalize", "normalize_update")

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
        defaults = dict(
            lr=lr,
            dim=dim,
            distribution=distribution,
            seed=seed,
            sigma=sigma,
            antithetic=antithetic,
            normalize=normalize,
            normalize_update=normalize_update,
            compartments=compartments,
            step=0,
        )
        super().__init__(params, defaults, worker)

    def _check_group(self, group: Mapping, others: list[dict]) -> None:
        super()._check_group(group, others)
        if not group["sigma"] > 0.0:
            raise ValueError(f"Invalid sigma: {group['sigma']} (must be > 0)")
        if group["antithetic"] and group["dim"] % 2:
            raise ValueError(
                f"Invalid dim: {group['dim']} (antithetic NES needs an even population)"
            )
        if group["compartments"] != "none":
            raise ValueError(
                f"Invalid compartments: {group['compartments']!r} (NES supports only 'none')"
            )
        for name in ("dim", "antithetic"):
            if others and group[name] != others[0][name]:
                raise ValueError(
                    f"Invalid {name}: {group[name]!r}; the param groups of NES share one "
                    f"population, and the first group has {name}={others[0][name]!r}"
                )

    @property
    def num_coordinates(self) -> int:
        return self.param_groups[0]["dim"]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for g in self.param_groups for p in g["params"])

    @property
    def compression(self) -> float:
        return self.num_params / self.num_coordinates

    def _groups(self, draws: int) -> list[_NESGroup]:
        """Each param group's part of this step; a group's seed index counts the earlier
        groups with the same seed (0 for one group)."""
        parts = []
        for gi, group in enumerate(self.param_groups):
            index = sum(1 for other in self.param_groups[:gi] if other["seed"] == group["seed"])
            theta = _flat([p.detach() for p in group["params"]])
            parts.append(
                _NESGroup(
                    params=group["params"],
                    theta=theta,
                    seeds=step_seeds(group["seed"], group["step"], index, self.worker, draws),
                    distribution=group["distribution"],
                    scale=1.0 / math.sqrt(theta.numel()) if group["normalize"] else 1.0,
                    sigma=group["sigma"],
                    lr=group["lr"],
                    normalize_update=group["normalize_update"],
                )
            )
        return parts

    @torch.no_grad()
    def step(self, closure=None, offspring=None):
        if closure is None and offspring is None:
            raise ValueError(
                "NES.step needs a closure that returns the minibatch loss, "
                "or offspring=[one closure per offspring]"
            )
        dim, antithetic = self.param_groups[0]["dim"], self.param_groups[0]["antithetic"]
        population = dim if offspring is None else len(offspring)
        if not 0 < population <= dim:
            raise ValueError(f"NES.step: {population} offspring closures for dim={dim}")
        if antithetic and population % 2:
            raise ValueError(f"NES.step: antithetic pairs need an even population: {population}")
        draws = population // 2 if antithetic else population
        parts = self._groups(draws)
        device = parts[0].theta.device
        evaluate = [closure] * population if offspring is None else offspring
        loss = closure() if closure is not None else None
        fitness = torch.empty(population, dtype=torch.float64, device=device)
        signs = (1.0, -1.0) if antithetic else (1.0,)
        for i in range(draws):
            eps = [part.raw(i).mul_(part.scale).to(part.theta.dtype) for part in parts]
            for j, sign in enumerate(signs):
                k = i * len(signs) + j
                for part, e in zip(parts, eps, strict=True):
                    _copy_flat(part.params, part.theta + (sign * part.sigma) * e)
                fitness[k] = evaluate[k]()
        ranks = torch.empty(population, dtype=torch.float64, device=device)
        ranks[fitness.argsort(stable=True)] = torch.arange(
            population, dtype=torch.float64, device=device
        )
        weights = ranks / max(population - 1, 1) - 0.5
        # eps_i and -eps_i: their weights combine into one per draw.
        w = (weights[0::2] - weights[1::2]) if antithetic else weights
        w = w.float().tolist()  # the step's one host read
        directions = []
        for part in parts:
            direction = torch.zeros_like(part.theta)
            # The second pass regenerates each eps_i instead of keeping n x D.
            for i in range(draws):
                direction.add_(part.raw(i).to(part.theta.dtype), alpha=w[i] * part.scale)
            direction.mul_(1.0 / (part.sigma * population))
            if part.normalize_update:
                direction.mul_(1.0 / math.sqrt(part.theta.numel()))
            _copy_flat(part.params, part.theta - part.lr * direction)
            directions.append(direction)
        for group in self.param_groups:
            group["step"] += 1
        grads = [p.grad for part in parts for p in part.params]
        have_grads = all(g is not None for g in grads)
        if have_grads:
            g, u = _flat(grads).double(), torch.cat(directions).double()
            dot, denom = torch.dot(g, u), g.norm() * u.norm()
        if offspring is not None:
            loss = fitness.mean()  # the offspring's mean loss, as the authors report

        def read() -> dict[str, float]:
            corr = float("nan")
            if have_grads and float(denom) > 0:
                corr = float(dot) / float(denom)
            r = weights.cpu()
            return {
                "grad_corr": corr,
                "coord_mean": float(r.mean()),
                "coord_std": float(r.std()) if population > 1 else 0.0,
                "loss": math.nan if loss is None else float(loss),
            }

        self.stats = LazyStats(read)
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
