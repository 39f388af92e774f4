"""An optimiser by method name (the CLI's and the config's ``method``)."""

from __future__ import annotations

import torch

from rbd.optim.fpd import FPD
from rbd.optim.nes import NES
from rbd.optim.rbd import RBD
from rbd.optim.update_rules import BETA2, EPS, MOMENTUM, check_update_rule
from rbd.spec.choices import METHODS


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
    distribution, seed and compartments are ignored), or with ``update_rule``
    ``"momentum"`` SGD with momentum 0.9, with ``"adam"`` ``torch.optim.Adam`` (betas
    0.9 and ``beta2``, eps 1e-8): the update rules RBD and FPD apply to their
    coordinates, applied to the parameters. Other options
    (``normalize``, ``worker``; RBD/FPD ``chunk_size``, ``threads``; RBD
    ``derivatives``; FPD ``cache``; NES ``sigma``, ``antithetic``) go to the
    class.
    """
    if method == "sgd":
        rule, beta2 = options.pop("update_rule", "sgd"), options.pop("beta2", BETA2)
        check_update_rule(rule, beta2)
        if rule == "adam":
            return torch.optim.Adam(params, lr=lr, betas=(MOMENTUM, beta2), eps=EPS)
        if rule == "momentum":
            return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
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
