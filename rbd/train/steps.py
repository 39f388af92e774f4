"""One optimiser update as each method takes it: a backward pass, a loss closure
(NES), forward-mode coordinates (RBD by jvps), or NES offspring on their own batches."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rbd.optim import module_loss
from rbd.optim.seeded import SeededOptimizer
from rbd.train.models import kernel_layers

if TYPE_CHECKING:
    pass


@contextmanager
def unchanged_buffers(model: torch.nn.Module):
    """Batch norm's running statistics move once per step, with the step's own forward
    pass; the extra forward passes of NES (perturbed parameters) and of forward-mode
    coordinates must not move them again."""
    saved = [buffer.clone() for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)


def take_step(
    model, optimizer, batches, offspring: bool, l2: float = 0.0
) -> tuple[float, int, int]:
    """One optimiser update; its loss, and the correct answers and images it was scored on."""
    if offspring:
        return nes_offspring_step(model, optimizer, batches)
    ((x, y),) = batches
    loss, logits = train_step(model, optimizer, x, y, l2)
    return loss, int((logits.argmax(1) == y).sum()), len(y)


def l2_penalty(model: torch.nn.Module, l2: float) -> torch.Tensor:
    """``l2`` times the sum of squared kernel weights (dense and convolution weights; no
    biases): Keras's ``l2(l2)`` kernel regulariser, as Li et al. add it to the loss."""
    return l2 * sum(layer.weight.square().sum() for layer in kernel_layers(model))


def train_step(model, optimizer, x, y, l2: float = 0.0) -> tuple[float, torch.Tensor]:
    """One optimiser step on (x, y); returns the minibatch loss and logits before the step.
    How the step is taken is what the optimiser's ``step_input`` asks for. With ``l2`` the
    gradient is the regularised loss's (`l2_penalty`); the loss returned is the
    cross-entropy alone, comparable with unregularised runs."""
    optimizer.zero_grad(set_to_none=True)
    if len(y) == 0:  # a worker's empty share of the last, short global batch
        optimizer.step(loss=0.0)
        return 0.0, torch.zeros(0, 10, device=y.device)
    ours = isinstance(optimizer, SeededOptimizer)  # else torch.optim's own (SGD)
    needs = optimizer.step_input if ours else "gradient"
    if needs == "loss_closure":  # NES
        with torch.no_grad():
            logits = model(x)
            loss = F.cross_entropy(logits, y)

        def closure():
            with torch.no_grad():
                return F.cross_entropy(model(x), y)

        with unchanged_buffers(model):
            optimizer.step(closure)
        return loss.item(), logits
    if needs == "forward_closure":  # RBD by jvps
        with torch.no_grad():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        with unchanged_buffers(model):
            optimizer.step(module_loss(model, lambda out: F.cross_entropy(out, y), x))
        return loss.item(), logits
    with optimizer.offset_point() if ours else nullcontext():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        (loss + l2_penalty(model, l2) if l2 else loss).backward()
    if ours and optimizer.takes_loss:  # distributed: a diverged worker tells all
        optimizer.step(loss=loss.item())
    else:
        optimizer.step()
    return loss.item(), logits.detach()


def nes_offspring_step(model, optimizer, batches) -> tuple[float, int, int]:
    """One NES update whose offspring i is scored on ``batches[i]``, as in the authors'
    code; returns the offspring's mean loss, and their correct count and images (what the
    authors report as training loss and accuracy: no extra unperturbed passes).

    A model with batch norm gets one unperturbed forward pass on the first minibatch, so
    that its running statistics move once per update, as under every other method."""
    correct = [0]
    if any(True for _ in model.buffers()):
        with torch.no_grad():
            model(batches[0][0])

    def offspring(x, y):
        def closure():
            logits = model(x)
            correct[0] += int((logits.argmax(1) == y).sum())
            return F.cross_entropy(logits, y)

        return closure

    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad(), unchanged_buffers(model):
        loss = optimizer.step(offspring=[offspring(x, y) for x, y in batches])
    return float(loss), correct[0], sum(len(y) for _, y in batches)


def step_times(stats: dict, step_s: float) -> dict:
    """A distributed step's wall time, split: the rest of the step is compute
    (forward, backward, own coordinates and own update)."""
    comm, regen = stats.get("comm_s", 0.0), stats.get("regen_s", 0.0)
    return {"step_s": step_s, "compute_s": step_s - comm - regen, "regen_s": regen, "comm_s": comm}
