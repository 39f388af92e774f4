"""Random-bases optimisers (RBD, FPD, NES) with the ``torch.optim`` interface.

All three share the seeded engine in :mod:`rbd.bases`. Parameters of a
param group are seen as one flat vector theta of length D, split into
compartments (contiguous ranges), each with its own independent bases: the
projection is block diagonal.

As in ``torch.optim.SGD``, every hyperparameter, including those that fix the
random bases (``dim``, ``seed``, ``distribution``, ``normalize``,
``compartments``, ...), is a param-group setting whose default comes from the
constructor; a group added with ``add_param_group`` is validated and trained
by the next step, and ``state_dict()`` carries the settings, so that loading
one saved with other bases is an error rather than a silent change of run.
Statistics stay on the device until read (:mod:`rbd.optim.step_stats`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

import torch

from rbd.bases import (
    DISTRIBUTIONS,
)


def check_integer(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {low})")


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def add_flat(
    params: list[torch.Tensor], flat: torch.Tensor, alpha: float = 1.0, *, grads_only=False
) -> None:
    """``p += alpha * slice`` for each parameter and its consecutive slice of ``flat``: a
    flat update applied to the parameters (every optimiser here applies its updates so).
    ``grads_only``: like ``torch.optim.SGD``, a parameter without a gradient stays put, and
    its slice of ``flat`` is zeroed, so that statistics see the update applied."""
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset : offset + n]
        if grads_only and p.grad is None:
            piece.zero_()
        else:
            p.add_(piece.view_as(p).to(p.dtype), alpha=alpha)
        offset += n


def copy_flat(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy consecutive slices of ``flat`` into ``params``."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


# What an optimiser's step() needs: a backward pass first ("gradient", taken inside
# ``offset_point()``), a closure returning the loss at the current parameters
# ("loss_closure": NES), or a closure params -> loss ("forward_closure": RBD's forward-mode
# coordinates, no backward pass).
STEP_INPUTS = ("gradient", "loss_closure", "forward_closure")


class SeededOptimizer(torch.optim.Optimizer):
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
    # What step() needs from its caller (one of STEP_INPUTS), and whether it also takes the
    # minibatch loss (distributed RBD: a diverged worker tells all): a training loop reads
    # these instead of probing the optimiser.
    step_input: str = "gradient"
    takes_loss: bool = False

    def __init__(self, params, defaults: dict, worker: int):
        check_integer("worker", worker, 0)
        # This process's id among distributed workers, mixed into every seed: an attribute,
        # not a group setting, so that all workers load the one checkpoint worker 0 wrote.
        self.worker = worker
        for name in self.flag_settings:
            defaults[name] = bool(defaults[name])
        self._check_group(defaults, [])
        # Mapping of float statistics of the last step, read lazily (rbd.optim.step_stats).
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

    @property
    def num_coordinates(self) -> int:
        """Trainable coordinates per step (d summed over compartments)."""
        raise NotImplementedError

    def offset_point(self):
        """Where the gradient is to be taken: the parameters as they are (FPD with
        ``offset`` moves them inside the block)."""
        return nullcontext()

    def _check_group(self, group: Mapping, others: list[dict]) -> None:
        """Raise a ValueError naming the first invalid setting of ``group`` (its
        ``params`` may be absent; ``others`` are the groups already there)."""
        lr = group["lr"]
        if not lr >= 0.0:
            raise ValueError(f"Invalid lr: {lr} (the learning rate must be >= 0)")
        check_integer("dim", group["dim"], 1)
        if group["distribution"] not in DISTRIBUTIONS:
            raise ValueError(
                f"Invalid distribution: {group['distribution']!r}; choose one of {DISTRIBUTIONS}"
            )
        check_integer("seed", group["seed"], 0)

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
        on ``bases_settings`` (a ValueError names the first that differs). A state_dict
        that lacks a setting this optimiser has was saved by another version of it, whose
        state may mean something else: a ValueError names the setting."""
        saved_groups = [dict(saved) for saved in state_dict["param_groups"]]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"Invalid state_dict: it has {len(saved_groups)} param groups, this optimiser "
                f"has {len(self.param_groups)}"
            )
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            missing = sorted(set(self.defaults) - set(saved))
            if missing:
                raise ValueError(
                    f"Invalid state_dict: param group {index} lacks the setting(s) {missing} "
                    f"that this {type(self).__name__} has; it was saved by another version "
                    "of rbd and cannot be continued by this one"
                )
            for name in self.bases_settings:
                if name in saved and saved[name] != group[name]:
                    raise ValueError(
                        f"Invalid state_dict: param group {index} was saved with "
                        f"{name}={saved[name]!r}, this optimiser has {name}={group[name]!r}; "
                        "it would continue on other random bases"
                    )
        return saved_groups

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, refusing a state_dict saved with
        other random bases (another seed, dim, distribution, ...: a ValueError names it)."""
        groups = self._checked_groups(state_dict)
        super().load_state_dict({**state_dict, "param_groups": groups})
