"""Random-bases descent in a stock DistributedDataParallel loop, on CPU with gloo.

    .venv/bin/torchrun --standalone --nproc_per_node 2 examples/ddp_rbd.py

The training loop is plain DDP + ``torch.optim.SGD``; the one RBD line is
``register_comm_hook``. Each step, each bucket all-reduces d coordinates
instead of its gradient, and SGD applies the RBD update Phi^T Phi g.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from rbd.optim.ddp_hook import RBDHookState, rbd_hook


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dim", type=int, default=50, help="directions per bucket (d)")
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--seed", type=int, default=0, help="seeds the shared bases")
    return parser.parse_args()


def teacher_batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of a fixed random linear teacher's regression task, the same on every rank."""
    weights = torch.randn(20, 1, generator=torch.Generator().manual_seed(1))
    x = torch.randn(size, 20, generator=torch.Generator().manual_seed(1000 + step))
    return x, x @ weights


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo")  # torchrun sets the rank, world size and address
    rank, workers = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    ddp = DistributedDataParallel(model)
    state = RBDHookState(seed=args.seed, dim=args.dim)
    ddp.register_comm_hook(state, rbd_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr)

    mine = slice(rank * args.batch_size, (rank + 1) * args.batch_size)
    for step in range(args.steps):
        x, y = teacher_batch(step, workers * args.batch_size)
        opt.zero_grad()
        loss = F.mse_loss(ddp(x[mine]), y[mine])
        loss.backward()
        opt.step()
        dist.all_reduce(loss := loss.detach(), op=dist.ReduceOp.AVG)
        if rank == 0 and (step == 0 or (step + 1) % 20 == 0):
            print(f"step {step + 1:3d}: loss {loss.item():.4f}", flush=True)

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(workers)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        same = all(torch.equal(g, flat) for g in gathered)
        print(f"parameters {'identical' if same else 'DIFFER'} on {workers} workers")
        sent, plain, n = (
            sum(state.wire_bytes.values()),
            sum(state.bucket_bytes.values()),
            len(state.wire_bytes),
        )
        print(
            f"all-reduced per step: {sent} bytes in {n} bucket{'s' * (n > 1)} of d = {args.dim} "
            f"(plain DDP: {plain} bytes)"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
