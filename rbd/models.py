"""The paper's models, named as in the paper (fc, cnn, resnet8)."""

from __future__ import annotations

from torch import nn

MODELS = ("fc", "cnn")


def fc(input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """Flatten, Dense 128 + ReLU, Dense 10 (D = 101,770 on 28x28x1)."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, 128), nn.ReLU(), nn.Linear(128, num_classes)
    )


def cnn(input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """Three unpadded 3x3 convolutions with two max-pools, Dense 64, Dense 10."""
    c, h, w = input_shape
    spatial_h = ((h - 2) // 2 - 2) // 2 - 2
    spatial_w = ((w - 2) // 2 - 2) // 2 - 2
    return nn.Sequential(
        nn.Conv2d(c, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * spatial_h * spatial_w, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


_BUILDERS = {"fc": fc, "cnn": cnn}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return _BUILDERS[name](input_shape, num_classes)


def count_params(model: nn.Module) -> int:
    """D: the number of trainable parameters (batch-norm statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
