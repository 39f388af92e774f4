"""FPD: fixed projection descent (Li et al. 2018), theta = theta_0 + Phi^T c with
Phi drawn once."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from rbd.bases import (
    generate_directions,
)
from rbd.optim.compartments import Compartment
from rbd.optim.rbd import RandomBases
from rbd.optim.seeded import add_flat


class FPD(RandomBases):
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
    flag_settings = (*RandomBases.flag_settings, "offset")

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
        compartments."""
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
                saved += [(p, p.detach().clone()) for p in group["params"]]
                add_flat(group["params"], last)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in saved:
                    p.copy_(value)

    @property
    def subspace_coordinates(self) -> list[torch.Tensor]:
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

    def _coordinates(self, compartment: Compartment, step: int, grad: torch.Tensor):
        if not self.cache:
            return super()._coordinates(compartment, step, grad)
        return (self._cached_directions(compartment) @ grad.float()).to(grad.dtype)

    def _expand(self, compartment: Compartment, step: int, coords: torch.Tensor):
        if not self.cache:
            return super()._expand(compartment, step, coords)
        update = self._cached_directions(compartment).t() @ coords.float()
        if not self.param_groups[compartment.group]["normalize"]:
            update /= compartment.dim
        return update.to(coords.dtype)

    def _cached_directions(self, compartment: Compartment) -> torch.Tensor:
        phi = self._cached.get(compartment)
        if phi is None:
            phi = self._cached[compartment] = self.directions(compartment)
        return phi

    def _project(self, compartment: Compartment, step: int, grad: torch.Tensor):
        if not self.cache:
            return super()._project(compartment, step, grad)
        phi = self._cached_directions(compartment)
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
