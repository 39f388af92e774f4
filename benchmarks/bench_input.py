"""What input handling costs a training step: augmentation + preprocessing vs pre-made batches.

For cnn on 28x28x1 (MNIST augmentation) and resnet8 on 32x32x3 (CIFAR-10 augmentation and
per-image standardisation), time SGD steps (batch 32) two ways on the same synthetic data:

- ``premade``: batches sliced in advance from tensors that are already preprocessed; each
  step is forward, backward and update only.
- ``augmented``: each step gathers a shuffled batch from the data tensor, augments it with
  `rbd.train.data.Augmentation` (seeded generator) and applies
  `rbd.train.data.preprocess`, as training does.

The two run interleaved, `--repeats` times each, and the fastest repeat of each counts, so
that other load on the machine shows up as little as possible. The table gives images per
second, the overhead of the augmented path, and the input handling alone (shuffle-gather,
augmentation, preprocessing with no model) as a share of a premade step.

    .venv/bin/python benchmarks/bench_input.py [--steps 100] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rbd.train.data import INPUT_SHAPES, Augmentation, preprocess
from rbd.train.models import build_model

CASES = (("cnn", "mnist"), ("resnet8", "cifar10"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for step in range(steps):
        fn(step)
    _sync(device)
    return time.perf_counter() - start


def bench(model_name, dataset, steps, batch_size, repeats, device):
    torch.manual_seed(0)
    shape = INPUT_SHAPES[dataset]
    n = steps * batch_size
    x = torch.rand(n, *shape, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    model = build_model(model_name, shape).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=2**-10)
    augment = Augmentation(dataset)
    generator = torch.Generator(device=device).manual_seed(0)
    premade = [
        (preprocess(dataset, x[i : i + batch_size]).clone(), y[i : i + batch_size])
        for i in range(0, n, batch_size)
    ]
    order = torch.randperm(n, device=device, generator=generator)

    def sgd_step(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def input_only(step):
        idx = order[step * batch_size : (step + 1) * batch_size]
        return preprocess(dataset, augment(x[idx], generator)), y[idx]

    def premade_step(step):
        sgd_step(*premade[step])

    def augmented_step(step):
        sgd_step(*input_only(step))

    for fn in (premade_step, augmented_step, input_only):  # warm-up
        _timed(fn, min(steps, 10), device)
    times = {"premade": [], "augmented": [], "input": []}
    for _ in range(repeats):
        times["premade"].append(_timed(premade_step, steps, device))
        times["augmented"].append(_timed(augmented_step, steps, device))
        times["input"].append(_timed(input_only, steps, device))
    return {k: min(v) for k, v in times.items()}, n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device {device}, {torch.get_num_threads()} CPU threads, batch {args.batch_size}, "
        f"{args.steps} steps, best of {args.repeats}"
    )
    header = (
        f"{'model':8} {'input':9} {'premade img/s':>14} {'augmented img/s':>16} "
        f"{'overhead':>9} {'input only us/batch':>20} {'input share':>12}"
    )
    print(header)
    print("-" * len(header))
    for model_name, dataset in CASES:
        t, n = bench(model_name, dataset, args.steps, args.batch_size, args.repeats, device)
        overhead = 100 * (t["augmented"] / t["premade"] - 1)
        share = 100 * t["input"] / t["premade"]
        per_batch = 1e6 * t["input"] / args.steps
        size = "x".join(str(s) for s in INPUT_SHAPES[dataset][1:])
        print(
            f"{model_name:8} {size:9} {n / t['premade']:14.0f} {n / t['augmented']:16.0f} "
            f"{overhead:8.1f}% {per_batch:20.0f} {share:11.1f}%"
        )


if __name__ == "__main__":
    main()
