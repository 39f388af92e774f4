"""RBD: descent along d random directions redrawn every step (Algorithm 1), with
coordinates from the gradient (c = Phi g) or from forward-mode derivatives."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from rbd.bases import (
    STRUCTURED,
    direction_chunks,
    expand,
    project,
    project_coordinates,
    step_seeds,
    structured_blocks,
)
from rbd.optim.compartments import COMPARTMENT_SCALES, Compartment, compartment_ranges
from rbd.optim.seeded import SeededOptimizer, add_flat, check_integer, flatten
from rbd.optim.step_stats import StepStatistics
from rbd.optim.update_rules import BETA2, STATE_KEYS, check_update_rule, coordinate_step
from rbd.spec.choices import DERIVATIVES

# Directions per batched jvp in forward mode (chunk_size overrides it).
FORWARD_CHUNK = 25
# The default learning rate of RBD and FPD: the authors' rate for RBD on FC-MNIST. With
# directions scaled by 1/sqrt(D) a step moves theta by about lr * d / D of the gradient,
# so SGD's usual rates (1e-3 to 1e-1) leave RBD and FPD close to their initial weights
# (tests/optim/test_optim_defaults.py trains with the defaults).
LR = 1.0


class RandomBases(SeededOptimizer):
    """Shared set-up of RBD and FPD: settings, compartments, the step loop."""

    redraw = True  # RBD draws new bases every step; FPD keeps the step-0 ones
    bases_settings = (
        *SeededOptimizer.bases_settings,
        "compartments",
        "compartment_scale",
        "even_dims",
    )
    flag_settings: tuple[str, ...] = ("normalize", "even_dims")

    def __init__(
        self,
        params,
        lr: float = LR,
        dim: int = 250,
        distribution: str = "gaussian",
        seed: int = 0,
        *,
        normalize: bool = True,
        compartments: str = "none",
        compartment_scale: str = "compartment",
        even_dims: bool = False,
        update_rule: str = "sgd",
        beta2: float = BETA2,
        worker: int = 0,
        chunk_size: int | None = None,
        threads: int | None = None,
        **group_defaults,
    ):
        unknown = sorted(set(group_defaults) - set(self.flag_settings))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected argument(s) {unknown}")
        if chunk_size is not None:
            check_integer("chunk_size", chunk_size, 1)
        if threads is not None:
            check_integer("threads", threads, 1)
        # How a step is computed, not what it computes (beyond float rounding): attributes.
        self.chunk_size = chunk_size
        self.threads = threads
        self.compartments: list[Compartment] = []
        # A structured Phi's drawn factors per compartment, with the step they are for:
        # drawn once per step for the coordinates and the update (once for good in FPD).
        self._kept_blocks: dict[Compartment, tuple[int, object]] = {}
        defaults = dict(
            lr=lr,
            dim=dim,
            distribution=distribution,
            seed=seed,
            normalize=normalize,
            compartments=compartments,
            compartment_scale=compartment_scale,
            even_dims=even_dims,
            update_rule=update_rule,
            beta2=beta2,
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
        check_update_rule(group["update_rule"], group["beta2"])

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
        if group["params"]:
            device = group["params"][0].device
            state = self.state[group["params"][0]]
            for key in STATE_KEYS[group["update_rule"]]:
                state[key] = [
                    torch.zeros(c.dim, dtype=torch.float32, device=device)
                    for c in self.compartments_of(index)
                ]

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
            threads=self.threads,
        )
        share = self._network_share(compartment)
        if share != 1.0:
            # Rows / sqrt(D) instead of / sqrt(n_k): c scales by sqrt(n_k / D), the
            # update Phi^T c / sqrt(D) by n_k / D.
            coords, update = coords.mul_(math.sqrt(share)), update.mul_(share)
        return coords, update

    def _blocks(self, compartment: Compartment, step: int):
        """The compartment's structured Phi at ``step``, drawn once (None for dense bases)."""
        group = self.param_groups[compartment.group]
        if group["distribution"] not in STRUCTURED:
            return None
        step = step if self.redraw else 0
        kept = self._kept_blocks.get(compartment)
        if kept is None or kept[0] != step:
            blocks = structured_blocks(
                self.seeds(compartment, step),
                compartment.size,
                group["distribution"],
                group["params"][0].device,
            )
            kept = self._kept_blocks[compartment] = (step, blocks)
        return kept[1]

    def _engine(self, compartment: Compartment, step: int) -> dict:
        """How the engine applies the compartment's Phi at ``step``: its distribution, scale,
        chunks, threads and (structured) drawn factors."""
        group = self.param_groups[compartment.group]
        return dict(
            distribution=group["distribution"],
            normalize=group["normalize"],
            chunk_size=self.chunk_size,
            threads=self.threads,
            blocks=self._blocks(compartment, step),
        )

    def _coordinates(self, compartment: Compartment, step: int, grad: torch.Tensor):
        """c = Phi g alone (the update is built from the update rule's step instead)."""
        seeds = self.seeds(compartment, step)
        coords = project_coordinates(grad, seeds, **self._engine(compartment, step))
        share = self._network_share(compartment)
        return coords.mul_(math.sqrt(share)) if share != 1.0 else coords

    def _expand(self, compartment: Compartment, step: int, coords: torch.Tensor):
        """Phi^T s for the compartment's Phi at ``step`` (rows scaled as in the update)."""
        seeds = self.seeds(compartment, step)
        update = expand(coords, seeds, compartment.size, **self._engine(compartment, step))
        share = self._network_share(compartment)
        return update.mul_(math.sqrt(share)) if share != 1.0 else update

    def _coordinate_step(self, compartment: Compartment, coords: torch.Tensor):
        """The group's update rule applied to the coordinate gradient (rbd.optim.update_rules)."""
        group = self.param_groups[compartment.group]
        rule = group["update_rule"]
        if rule == "sgd":
            return coords
        state = self.state[group["params"][0]]
        k = self.compartments_of(compartment.group).index(compartment)
        buffers = [state[key][k] for key in STATE_KEYS[rule]]
        return coordinate_step(rule, coords, buffers, group["step"], group["beta2"])

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
        stats = StepStatistics()
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            g = flatten(grads)
            update = torch.zeros_like(g)
            for comp in self.compartments_of(gi):
                part = g[comp.start : comp.stop]
                if group["update_rule"] == "sgd":
                    coords, u = self._project(comp, group["step"], part)
                    stats.add_coordinates(coords.float())
                else:
                    coords = self._coordinates(comp, group["step"], part)
                    stats.add_coordinates(coords.float())
                    coords = self._coordinate_step(comp, coords)
                    u = self._expand(comp, group["step"], coords.to(g.dtype))
                update[comp.start : comp.stop] = u
                self._record(coords, comp, group["lr"])
            lr = group["lr"]
            # A parameter without a gradient stays put (a zero gradient in the projection).
            add_flat(params, update, -lr, grads_only=True)
            self._record_update(group, update)
            group["step"] += 1
            stats.add_update(lr, update, g, [p.numel() for p in params])
        self.stats = stats.lazy()
        return loss


class RBD(RandomBases):
    r"""Random bases descent (Gressmann et al. 2020).

    At step t, for each compartment k with parameters theta_k (n_k entries)
    and gradient g_k, draw d_k directions phi_i from seeds
    ``(seed, t, k, worker, i)`` and update

    .. math:: c = \Phi g_k, \qquad \theta_k \leftarrow \theta_k - \eta\, \Phi^\top c

    with rows ``phi_i / sqrt(n_k)`` (``normalize=True``) or raw rows and the
    update divided by d_k (``normalize=False``).

    As in ``torch.optim.SGD``, ``lr``, ``dim``, ``distribution``, ``seed``,
    ``normalize``, ``compartments``, ``compartment_scale``, ``even_dims``,
    ``update_rule`` and ``beta2`` are param-group settings (the arguments are their defaults):
    each group has its own compartments, seeds and step counter t. Compartment
    indices k count on from earlier groups with the same seed, so groups
    never share bases, and a group with a seed of its own is updated exactly
    as a one-group optimiser with that seed would update it.
    ``state_dict()`` carries the settings; loading one saved with other
    bases-defining settings raises a ValueError naming the setting.

    Args:
        params: parameters or param groups, as for ``torch.optim.SGD``.
        lr: learning rate eta (>= 0; default 1.0). With ``normalize=True`` a step moves
            theta by about ``lr * d_k / n_k`` times the gradient, so rates are larger than
            SGD's: 2^-4 to 2^4 in this project (README, "Choosing the learning rate").
        dim: directions per compartment (for ``compression:<f>`` the d_k are
            set by f instead).
        distribution: one of ``rbd.bases.projection.DISTRIBUTIONS``.
        seed: run seed (>= 0); different seeds give independent bases.
        normalize: scale directions by 1/sqrt(n_k) (default) or the update by 1/d_k.
        compartments: ``"none"``, ``"layer"``, ``"chunk:<n>"`` or ``"compression:<f>"``.
        compartment_scale: with ``normalize``, rows scaled by 1/sqrt(n_k) of their
            compartment (``"compartment"``, default) or by 1/sqrt(D) of the whole
            param group (``"network"``, the authors' code).
        even_dims: round ``compression:<f>`` d_k up to an even number (the authors').
        update_rule: how the coordinate gradient c becomes the step s, theta moving by
            -lr Phi^T s: ``"sgd"`` (s = c, default), ``"momentum"`` (0.9) or ``"adam"``
            (betas 0.9 and ``beta2``, eps 1e-8), with one buffer per direction index
            (:mod:`rbd.optim.update_rules` says what that means for re-drawn bases).
        beta2: Adam's second-moment decay (default 0.999, torch's).
        worker: this process's worker id, mixed into the seeds (distributed RBD);
            an attribute, so that every worker loads the same state_dict.
        chunk_size: directions generated at once (default: what fits in L2).
        threads: threads generating directions (default: torch's thread count).
            ``chunk_size`` and ``threads`` say how a step is computed, not what
            (beyond float rounding): they are attributes of the optimiser.

        derivatives: ``"backward"`` (default: ``step()`` after a backward
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

    def __init__(self, params, *args, derivatives: str = "backward", **kwargs):
        if derivatives not in DERIVATIVES:
            raise ValueError(f"Invalid derivatives: {derivatives!r}; choose one of {DERIVATIVES}")
        super().__init__(params, *args, **kwargs)
        self.derivatives = derivatives

    @property
    def step_input(self) -> str:  # type: ignore[override]  # a class attribute elsewhere
        return "forward_closure" if self.derivatives == "forward" else "gradient"

    def step(self, closure=None):
        if self.derivatives == "backward":
            return super().step(closure)
        if closure is None:
            raise ValueError(
                "RBD(derivatives='forward').step needs a closure params -> loss "
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
        stats = StepStatistics()
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
                    threads=self.threads,
                )
                if share != 1.0:  # expand scaled Phi^T c by 1/sqrt(n_k); rows need 1/sqrt(D)
                    update[comp.start : comp.stop].mul_(math.sqrt(share))
                stats.add_coordinates(coords)
            lr = group["lr"]
            add_flat(group["params"], update, -lr)
            group["step"] += 1
            if have_grads:
                g = flatten([p.grad for p in group["params"]]).float()
                stats.add_update(lr, update, g, [p.numel() for p in group["params"]])
        self.stats = stats.lazy()
        return loss


def module_loss(model: torch.nn.Module, loss_fn, *inputs):
    """A closure for ``RBD(derivatives="forward")``: ``params -> loss_fn(model(*inputs))``
    with the module's parameters replaced by ``params`` (in ``model.parameters()``
    order, as an optimiser built on ``model.parameters()`` sees them)."""
    names = [name for name, _ in model.named_parameters()]

    def closure(params):
        output = torch.func.functional_call(model, dict(zip(names, params, strict=True)), inputs)
        return loss_fn(output)

    return closure
