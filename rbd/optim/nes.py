"""NES: natural evolution strategies along d random perturbations (the paper's
gradient-free baseline)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch

from rbd.bases import (
    generate_directions,
    step_seeds,
)
from rbd.optim.seeded import SeededOptimizer, copy_flat, flatten
from rbd.optim.step_stats import LazyStats


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


class NES(SeededOptimizer):
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

    bases_settings = (*SeededOptimizer.bases_settings, "antithetic")
    flag_settings = ("antithetic", "normalize", "normalize_update")
    step_input = "loss_closure"

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
            theta = flatten([p.detach() for p in group["params"]])
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
                    copy_flat(part.params, part.theta + (sign * part.sigma) * e)
                fitness[k] = evaluate[k]()
        ranks = torch.empty(population, dtype=torch.float64, device=device)
        ranks[fitness.argsort(stable=True)] = torch.arange(
            population, dtype=torch.float64, device=device
        )
        weights = ranks / max(population - 1, 1) - 0.5
        # eps_i and -eps_i: their weights combine into one per draw.
        combined = (weights[0::2] - weights[1::2]) if antithetic else weights
        w = combined.float().tolist()  # the step's one host read
        directions = []
        for part in parts:
            direction = torch.zeros_like(part.theta)
            # The second pass regenerates each eps_i instead of keeping n x D.
            for i in range(draws):
                direction.add_(part.raw(i).to(part.theta.dtype), alpha=w[i] * part.scale)
            direction.mul_(1.0 / (part.sigma * population))
            if part.normalize_update:
                direction.mul_(1.0 / math.sqrt(part.theta.numel()))
            copy_flat(part.params, part.theta - part.lr * direction)
            directions.append(direction)
        for group in self.param_groups:
            group["step"] += 1
        grads = [p.grad for part in parts for p in part.params]
        have_grads = all(g is not None for g in grads)
        if have_grads:
            g, u = flatten(cast(list[torch.Tensor], grads)).double(), torch.cat(directions).double()
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
