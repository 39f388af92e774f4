"""Batch norm under every optimiser: running statistics are buffers, moved once per step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rbd.bases import generate_directions, step_seeds
from rbd.optim import build_optimizer
from rbd.train.models import build_model, count_params
from rbd.train.steps import train_step


@pytest.mark.parametrize("method", ["sgd", "rbd", "fpd", "nes"])
def test_running_statistics_move_exactly_as_one_forward_pass(method):
    torch.manual_seed(0)
    model = build_model("resnet8", (3, 32, 32))
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    # Independent reference: one train-mode forward pass of a copy moves the statistics.
    reference = build_model("resnet8", (3, 32, 32))
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference(x)
    opt = build_optimizer(method, model.parameters(), lr=1e-3, dim=20, seed=0)
    model.train()
    train_step(model, opt, x, y)
    for (name, got), want in zip(model.named_buffers(), reference.buffers(), strict=True):
        assert torch.equal(got, want), name
    # The statistics are not parameters, so no optimiser ever projects them.
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert not any(b.requires_grad for b in model.buffers())
    assert F.cross_entropy(model(x), y).isfinite()


def test_nes_offspring_update_moves_statistics_once_on_its_first_minibatch():
    from rbd.train.steps import nes_offspring_step

    torch.manual_seed(0)
    model = build_model("resnet8", (3, 32, 32))
    batches = [(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(3)]
    reference = build_model("resnet8", (3, 32, 32))
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference(batches[0][0])
    opt = build_optimizer("nes", model.parameters(), lr=1e-3, dim=3, seed=0)
    model.train()
    loss, correct, seen = nes_offspring_step(model, opt, batches)
    for (name, got), want in zip(model.named_buffers(), reference.buffers(), strict=True):
        assert torch.equal(got, want), name
    # The offspring's counts, computed here: offspring i is the starting weights plus
    # sigma eps_i (eps_i from the run's seeds), scored in train mode on minibatch i.
    eps = generate_directions(step_seeds(0, 0, 0, 0, 3), count_params(model), "gaussian")
    start = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    want_correct, want_loss = 0, 0.0
    for i, (x, y) in enumerate(batches):
        offspring = build_model("resnet8", (3, 32, 32))
        offspring.load_state_dict(reference.state_dict())
        torch.nn.utils.vector_to_parameters(start + 0.01 * eps[i], offspring.parameters())
        offspring.train()
        with torch.no_grad():
            logits = offspring(x)
        want_correct += int((logits.argmax(1) == y).sum())
        want_loss += float(F.cross_entropy(logits, y)) / 3
    assert seen == 12 and correct == want_correct
    assert math.isfinite(loss) and loss == pytest.approx(want_loss, rel=1e-4)
