"""How RBD and FPD turn a step's coordinate gradient c = Phi g into the coordinate step s
(the parameters then move by -lr Phi^T s): plain SGD (s = c), heavy-ball momentum or Adam,
each as torch.optim applies it to parameters, here applied to the d coordinates.

For FPD the coordinates are fixed axes of one subspace, so Adam on them is Adam on
c in theta = theta_0 + Phi^T c, Li et al.'s protocol. For RBD the axes are re-drawn every
step: moment i then averages the coordinates of unrelated directions i of past steps, so
momentum adds noise of past steps' directions' weights, and Adam's second moment becomes
a per-index running estimate of E[c_i^2], which for fresh Gaussian directions is the same for
every i (about |g|^2 / D): Adam on RBD's coordinates is close to normalising the step by a
running gradient norm. It is built because the intrinsic-dimension protocol asks for it, and
is reported as that, not as Adam in the usual sense.
"""

from __future__ import annotations

import torch

from rbd.spec.choices import UPDATE_RULES

# Heavy-ball momentum, and Adam's first-moment decay: torch's and Li et al.'s default 0.9.
MOMENTUM = 0.9
# Adam's second-moment decay: torch's default (Li et al.'s scripts ran 0.99: the
# intrinsic-dimension preset sets it) and its epsilon (torch's and TensorFlow's 1e-8).
BETA2 = 0.999
EPS = 1e-8
# The optimiser state each rule keeps per compartment (one tensor of d_k entries each).
STATE_KEYS = {"sgd": (), "momentum": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq")}


def check_update_rule(rule: str, beta2: float) -> None:
    """A ValueError naming the setting when the rule or its decay cannot work."""
    if rule not in UPDATE_RULES:
        raise ValueError(f"Invalid update_rule: {rule!r}; choose one of {UPDATE_RULES}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"Invalid beta2: {beta2!r} (must be in [0, 1))")


def coordinate_step(
    rule: str, coords: torch.Tensor, buffers: list[torch.Tensor], step: int, beta2: float
) -> torch.Tensor:
    """The step s for coordinate gradient ``coords`` at step ``step`` (0-based), updating
    ``buffers`` (this compartment's ``STATE_KEYS[rule]``, starting at zero) in place.

    momentum: b <- 0.9 b + c, s = b (torch.optim.SGD with momentum 0.9, no dampening;
    its first step's b = c is this with b = 0).
    adam: m <- 0.9 m + 0.1 c, v <- beta2 v + (1 - beta2) c^2,
    s = (m / (1 - 0.9^t)) / (sqrt(v / (1 - beta2^t)) + 1e-8), t = step + 1 (torch.optim.Adam).
    """
    c = coords.float()
    if rule == "sgd":
        return c
    if rule == "momentum":
        (buffer,) = buffers
        return buffer.mul_(MOMENTUM).add_(c).clone()
    t = step + 1
    m, v = buffers
    m.mul_(MOMENTUM).add_(c, alpha=1.0 - MOMENTUM)
    v.mul_(beta2).addcmul_(c, c, value=1.0 - beta2)
    denom = (v / (1.0 - beta2**t)).sqrt_().add_(EPS)
    return m / (1.0 - MOMENTUM**t) / denom
