"""rbd.train.models: the paper's parameter counts, shapes and batch-norm handling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rbd.train.models import MODELS, build_model, count_params

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


@pytest.mark.parametrize(
    "name,shape,expected",
    [
        ("fc", MNIST, 101_770),
        ("fc", CIFAR, 394_634),
        ("cnn", MNIST, 93_322),
        ("cnn", CIFAR, 122_570),
        ("resnet8", CIFAR, 78_330),  # the paper's D; see rbd.train.models.ResNet8
        ("resnet8", MNIST, 78_042),  # only the first convolution sees fewer channels
    ],
)
def test_parameter_counts(name, shape, expected):
    assert count_params(build_model(name, shape)) == expected


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_forward_gives_logits(name, shape):
    model = build_model(name, shape)
    out = model(torch.rand(4, *shape))
    assert out.shape == (4, 10) and out.dtype == torch.float32
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_batch_norm_statistics_are_buffers_not_parameters():
    model = build_model("resnet8", CIFAR)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 10  # stem, then three per block (two convs and the shortcut)
    names = {name for name, _ in model.named_parameters()}
    assert not any("running" in name or "num_batches" in name for name in names)
    running = sum(m.running_mean.numel() + m.running_var.numel() for m in norms)
    assert running == 2 * sum(m.num_features for m in norms)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert not any(buffer.requires_grad for buffer in model.buffers())


def test_resnet8_train_and_eval_modes():
    torch.manual_seed(0)
    model = build_model("resnet8", CIFAR)
    x = torch.rand(8, *CIFAR)
    before = [b.clone() for b in model.buffers()]
    model.train()
    model(x)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x[:3])
    torch.testing.assert_close(first[:3], second)  # eval: no dependence on the batch


def test_count_params_skips_frozen_parameters():
    model = build_model("fc", MNIST)
    model[1].bias.requires_grad_(False)
    assert count_params(model) == 101_770 - 128


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="fc, cnn, resnet8"):
        build_model("vgg", CIFAR)


def _layers(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _fans(layer):
    receptive = layer.weight[0, 0].numel() if layer.weight.dim() > 2 else 1
    return layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive


@pytest.mark.parametrize("name", MODELS)
def test_glorot_init_is_keras_default(name):
    """Keras's glorot_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); zero biases."""
    torch.manual_seed(0)
    model = build_model(name, CIFAR)  # init="glorot" is the default
    for layer in _layers(model):
        fan_in, fan_out = _fans(layer)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound
        if w.numel() >= 5000:  # variance of U(-a, a) is a^2 / 3, within sampling error
            assert float(w.var()) == pytest.approx(bound**2 / 3, rel=0.1)
        if layer.bias is not None:
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_torch_init_keeps_pytorch_defaults():
    """PyTorch's default: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    model = build_model("cnn", MNIST, init="torch")
    for layer in _layers(model):
        fan_in, _ = _fans(layer)
        bound = 1 / math.sqrt(fan_in)
        w = layer.weight.detach()
        assert w.abs().max() <= bound and float(w.abs().max()) > 0.9 * bound
        assert layer.bias.abs().max() > 0
    with pytest.raises(ValueError, match="choose one of glorot, torch"):
        build_model("fc", MNIST, init="he")
