"""The paper's models, named as in the paper (fc, cnn, resnet8), and Li et al.'s two MNIST
networks of the intrinsic-dimension experiment (fc2x200, lenet)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rbd.spec.choices import INITS, MODELS

# Keras's truncated normal keeps draws within two standard deviations.
TRUNCATION_STDS = 2.0


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


def fc2x200(input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """Li et al.'s MNIST FC network: Dense 200 + ReLU twice, Dense 10 (D = 199,210)."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def lenet(input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """Li et al.'s LeNet: 5x5 valid convolutions to 6 and 16 channels, each with ReLU and a
    2x2 max-pool, Dense 120, Dense 84 (ReLU), Dense 10 (D = 44,426 on 28x28x1)."""
    c, h, w = input_shape
    spatial_h, spatial_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * spatial_h * spatial_w, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a 1x1-conv-BN projection shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 for CIFAR-10: D = 78,330 on 32x32x3, as the paper states.

    A CIFAR ResNet (He et al. 2016, 6n+2 layers with n = 1): a 3x3 convolution to 16
    channels with batch norm and ReLU, one basic block per stage at 16, 32 and 64 channels
    (strides 1, 2, 2), global average pooling and a dense layer to 10 classes. Convolutions
    have no bias (batch norm follows each one). Every block's shortcut is a 1x1 projection
    with batch norm, the first block included (He et al.'s option C, "all shortcuts are
    projections"): of the layouts searched this is the one whose trainable parameter count
    is exactly the paper's 78,330 (the usual identity shortcut in the first stage gives
    78,042; conv biases everywhere 78,378). The authors' ResNet code is not public; another
    reading of their number is Keras's ``count_params`` (which also counts batch norm's moving
    mean and variance) on a layout with 240 batch-norm channels, whose trainable D would be
    77,850. Batch norm's running statistics are buffers, so they are never projected or
    counted in D; train()/eval() is the caller's job.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def resnet8(input_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """ResNet-8 (see `ResNet8`); any input size, D = 78,330 on 32x32x3."""
    return ResNet8(input_shape, num_classes)


_BUILDERS = {"fc": fc, "cnn": cnn, "resnet8": resnet8, "fc2x200": fc2x200, "lenet": lenet}


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int = 10,
    init: str = "glorot",
) -> nn.Module:
    """Model ``name`` with initial weights from the global torch generator.

    ``init="glorot"`` (default) re-initialises every convolution and dense layer as
    Keras does, the framework of the authors' code: weights Glorot-uniform, that is
    U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), biases zero. PyTorch's own default
    (``init="torch"``, variance 1 / (3 fan_in)) gives the CNN's deeper layers 2 to 6 times
    less variance, and the CNN then starts on a flat plateau where random-bases steps,
    which see only d/D of the gradient, stall. ``init="he_normal"``: Keras's he_normal as
    Li et al.'s Keras 2 ran it, weights N(0, 2 / fan_in) truncated at two standard
    deviations, biases zero. Batch norm keeps scale 1 and shift 0.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    model = _BUILDERS[name](input_shape, num_classes)
    if init == "torch":
        return model
    for module in kernel_layers(model):
        if init == "glorot":
            nn.init.xavier_uniform_(module.weight)
        else:
            fan_in = module.weight[0].numel()
            std = math.sqrt(2.0 / fan_in)
            bound = TRUNCATION_STDS * std
            nn.init.trunc_normal_(module.weight, std=std, a=-bound, b=bound)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


def kernel_layers(model: nn.Module) -> list[nn.Module]:
    """The dense and convolution layers, whose weights (kernels) Keras initialises and
    regularises (biases and batch norm are neither)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def count_params(model: nn.Module) -> int:
    """D: the number of trainable parameters (batch-norm statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
