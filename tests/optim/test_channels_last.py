"""The runner puts CPU CNNs in the channels-last layout (rbd.train._on_device): every
optimiser must step a channels-last model exactly as the same model laid out NCHW, i.e.
flatten parameters and gradients in their logical order, not in memory order."""

from __future__ import annotations

import copy

import pytest
import torch

from rbd.optim import build_optimizer
from rbd.train.loop import _on_device
from rbd.train.models import build_model

SETTINGS = {
    "rbd": {"lr": 0.5, "dim": 16},
    "rbd-layer": {"lr": 0.5, "dim": 16, "compartments": "layer"},
    "fpd": {"lr": 0.5, "dim": 16},
    "nes": {"lr": 0.01, "dim": 8},
    "sgd": {"lr": 0.1, "dim": 1},
}


def _step(model, method, x, y):
    settings = dict(SETTINGS[method])
    name = method.split("-")[0]
    opt = build_optimizer(name, model.parameters(), seed=3, **settings)
    loss_fn = torch.nn.CrossEntropyLoss()
    if name == "nes":
        opt.step(lambda: loss_fn(model(x), y))
        return
    loss_fn(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("method", list(SETTINGS))
def test_channels_last_step_equals_nchw_step(method):
    torch.manual_seed(0)
    reference = build_model("cnn", (1, 28, 28))
    model = _on_device(copy.deepcopy(reference), torch.device("cpu"))
    conv = model[3].weight  # 64 x 32 x 3 x 3 (the first has one input channel)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    before = [p.detach().clone() for p in reference.parameters()]

    _step(reference, method, x, y)
    _step(model, method, x, y)

    moved = 0.0
    for want, got, start in zip(reference.parameters(), model.parameters(), before, strict=True):
        # The update, not just the weights: a permuted update of the same size would
        # change the weights by as much as the update itself.
        torch.testing.assert_close(got - start, want - start, rtol=1e-4, atol=1e-6)
        moved += float((want - start).detach().abs().sum())
    assert moved > 0
