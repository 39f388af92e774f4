"""What a training run does across the W workers of distributed RBD, beyond the optimiser's
own exchange: each worker's share of a global batch, batch norm's buffers made equal, and
the check that every worker still trains the same model."""

from __future__ import annotations

import torch

from rbd.optim.distributed import Workers


def shard(workers: Workers, indices: torch.Tensor) -> torch.Tensor:
    """This worker's part of one global batch: the rank-th of W consecutive, equal parts
    (sizes differ by at most one in the last, shorter batch)."""
    return torch.tensor_split(indices, workers.size)[workers.rank]


def sync_buffers(workers: Workers, model: torch.nn.Module) -> None:
    """Average floating-point buffers (batch-norm statistics) over workers, summed in rank
    order so that every worker gets the same bits."""
    if workers.size == 1:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.copy_(workers.all_gather(buf).sum(0).div_(workers.size))


def check_identical(workers: Workers, model: torch.nn.Module, epoch: int) -> None:
    """Raise if any worker's parameters or buffers differ from worker 0's."""
    if workers.size == 1:
        return
    tensors = [t.detach().double() for t in (*model.parameters(), *model.buffers())]
    total = sum(float(t.sum()) for t in tensors)
    squares = sum(float(t.square().sum()) for t in tensors)
    local = torch.tensor([total, squares], dtype=torch.float64, device=workers.device)
    sums = workers.all_gather(local).cpu()
    bad = [w for w in range(workers.size) if not torch.equal(sums[w], sums[0])]
    if bad:
        raise RuntimeError(
            f"distributed RBD: after epoch {epoch} the parameters of worker(s) {bad} "
            f"differ from worker 0's (checksums {sums.tolist()}); the workers no longer "
            "train the same model"
        )
