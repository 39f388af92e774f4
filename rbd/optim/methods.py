"""An optimiser by method name (the CLI's and the config's ``method``)."""

from __future__ import annotations

import torch

from rbd.optim.fpd import FPD
from rbd.optim.nes import NES
from rbd.optim.rbd import RBD

METHODS = ("sgd", "rbd", "fpd", "nes")


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
