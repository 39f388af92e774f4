"""Random-bases descent inside stock ``DistributedDataParallel``: a communication hook.

DDP hands a communication hook each bucket's flat gradient g_w (this worker's,
not yet averaged). :func:`rbd_hook` projects it onto d directions that every
worker draws from the same seeds, all-reduces only the d coordinates, and
returns the expanded update as the bucket's gradient::

    c_w = Phi g_w                   (Phi: d x n, rows raw / sqrt(n), n = bucket size)
    c = mean_w c_w                  (one all-reduce of d numbers)
    bucket gradient <- Phi^T c = Phi^T Phi mean_w g_w

Projection is linear, so the mean of the workers' coordinates is the
projection of the mean gradient: a plain ``torch.optim.SGD`` then takes the RBD
step theta <- theta - lr Phi^T Phi g of the gradient that DDP would have
averaged, with d numbers per bucket on the wire instead of n. Any trainer built
on DDP (Lightning, the Hugging Face Trainer, a hand-written loop) runs RBD this
way without knowing about it.

Buckets are compartments. DDP decides the buckets: it packs parameters by
size, closing a bucket once it holds ``bucket_cap_mb`` (25 MiB by default),
and after the first iteration rebuilds them in the order in which gradients
became ready (PyTorch 2.14 runs that first iteration with every parameter in
one bucket; ``bucket.parameters()`` lists a bucket's members in buffer order).
Bucket k at step t draws its d
directions from ``step_seeds(seed, t, k, 0, d)``: compartment k, worker 0 on
every rank, so all ranks share them. The bases are therefore block-diagonal
over buckets, like RBD's compartments: a model in one bucket (a small model,
or a large ``bucket_cap_mb``) gets plain RBD with d directions in all, and K
buckets get K x d. Directions are redrawn every step, so a rebuild changes
only which parameters later steps group together.

The step counter advances when DDP hands over its last bucket, so steps in
``no_sync()`` (gradient accumulation without communication) do not count.
"""

# No ``from __future__ import annotations``: DDP checks the hook's annotations
# against ``dist.GradBucket`` and ``torch.futures.Future[torch.Tensor]`` themselves.
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rbd.bases import DISTRIBUTIONS, expand, project_coordinates, step_seeds

# The settings that define the bases: a saved state loads only onto the same ones.
BASES_SETTINGS = ("seed", "dim", "distribution")


@dataclass
class RBDHookState:
    """What :func:`rbd_hook` needs across calls: the bases' settings and the step.

    ``wire_bytes`` and ``bucket_bytes`` map a bucket's index to the bytes it
    all-reduced at its latest step and to the bytes a plain DDP all-reduce of
    the bucket would have sent, so the saving can be read off while training.
    """

    seed: int
    dim: int
    distribution: str = "gaussian"
    process_group: dist.ProcessGroup | None = None
    step: int = 0
    wire_bytes: dict[int, int] = field(default_factory=dict)
    bucket_bytes: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def state_dict(self) -> dict:
        """The bases' settings and the step counter, for a checkpoint (no process group)."""
        return {name: getattr(self, name) for name in (*BASES_SETTINGS, "step")}

    def load_state_dict(self, state: dict) -> None:
        """Resume the step counter; settings that define other bases are an error."""
        for name in BASES_SETTINGS:
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"the saved hook state has {name}={state[name]!r}, this one "
                    f"{name}={getattr(self, name)!r}: it would draw other bases"
                )
        self.step = int(state["step"])


def rbd_hook(state: RBDHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: the bucket's gradient becomes ``Phi^T Phi mean_w g_w``.

    Register with ``ddp_model.register_comm_hook(RBDHookState(seed, dim), rbd_hook)``
    and step with any optimiser (``torch.optim.SGD`` for RBD's update).
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    workers = dist.get_world_size(group)
    grad = bucket.buffer()
    index = bucket.index()
    seeds = step_seeds(state.seed, state.step, index, 0, state.dim)
    # Coordinates only: the update is formed from the workers' mean after the all-reduce.
    coords = project_coordinates(grad, seeds, state.distribution, normalize=True)
    coords.div_(workers)
    state.wire_bytes[index] = coords.numel() * coords.element_size()
    state.bucket_bytes[index] = grad.numel() * grad.element_size()
    if bucket.is_last():
        state.step += 1

    def expand_mean(reduced: torch.futures.Future) -> torch.Tensor:
        mean = reduced.value()[0]
        # In place, so DDP's copy back into the gradients reads the bucket's own buffer.
        grad.copy_(expand(mean, seeds, grad.numel(), state.distribution, normalize=True))
        return grad

    return dist.all_reduce(coords, group=group, async_op=True).get_future().then(expand_mean)
