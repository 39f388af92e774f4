"""The engine, the optimisers and the runner on the device of $RBD_TEST_DEVICE (cpu unless
set; benchmarks/gpu_check.py runs every test that takes ``device`` on cuda), against the
CPU's compiled kernels.

On a CPU the device side runs the eager torch ops (``RBD_ENGINE=eager``), the ops every
other device runs, so that here too two paths are compared (docs/CONTRACTS.md: dense
directions bit for bit on every device and path, structured ones and the products to
float rounding).
"""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from torch import nn

from rbd.bases import (
    DENSE,
    DISTRIBUTIONS,
    STRUCTURED,
    expand,
    generate_directions,
    native,
    project,
    step_seeds,
)
from rbd.optim import build_optimizer
from rbd.spec import TrainConfig
from rbd.train.loop import train

# Run seeds, and a step, whose directions are drawn: three seeds' worth of rows.
RUN_SEEDS = (0, 1, 12_345)


@pytest.fixture
def device_path(device, monkeypatch):
    """A context in which the engine draws the way ``device`` does: eager on a CPU."""

    @contextlib.contextmanager
    def path():
        if device.type != "cpu":
            yield
            return
        with monkeypatch.context() as m:
            m.setenv("RBD_ENGINE", "eager")
            assert native.library() is None  # the kernels are off: two paths compared
            yield

    return path


def seeds_of(rows: int) -> list[int]:
    per_seed = -(-rows // len(RUN_SEEDS))
    return [s for run in RUN_SEEDS for s in step_seeds(run, 7, 0, 0, per_seed)][:rows]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).norm() / b.norm())


# 97 and 3,001: rows with a tail past the last full 64-value word.
@pytest.mark.parametrize("distribution", DENSE)
@pytest.mark.parametrize("size", [97, 3001, 70_001])
def test_dense_directions_are_the_cpu_bits(distribution, size, device, device_path):
    seeds = seeds_of(45)
    reference = generate_directions(seeds, size, distribution)
    with device_path():
        drawn = generate_directions(seeds, size, distribution, device=device)
    assert drawn.device.type == device.type
    assert torch.equal(drawn.cpu(), reference)


# 97 values in N = 128 slots: 300 rows are three blocks.
@pytest.mark.parametrize("distribution", STRUCTURED)
@pytest.mark.parametrize(("size", "rows"), [(97, 300), (3001, 20)])
def test_structured_directions_are_the_cpu_rows_to_rounding(
    distribution, size, rows, device, device_path
):
    seeds = seeds_of(rows)
    reference = generate_directions(seeds, size, distribution)
    with device_path():
        drawn = generate_directions(seeds, size, distribution, device=device)
    assert drawn.device.type == device.type
    assert float((drawn.cpu() - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("normalize", [True, False])
def test_products_are_the_cpu_products_to_rounding(distribution, normalize, device, device_path):
    g = torch.randn(70_001, generator=torch.Generator().manual_seed(3))
    seeds = seeds_of(37)
    coords, update = project(g, seeds, distribution, normalize=normalize)
    with device_path():
        on_coords, on_update = project(g.to(device), seeds, distribution, normalize=normalize)
        rebuilt = expand(on_coords, seeds, g.numel(), distribution, normalize=normalize)
    assert on_coords.device.type == on_update.device.type == device.type
    # Sums of D float32 products in another order: 4 u sqrt(D), u = 2^-24 (6e-5 here;
    # the kernels against the eager ops differ by 2-3e-6).
    rounding = 4 * 2**-24 * math.sqrt(g.numel())
    assert rel_err(on_coords, coords) < rounding and rel_err(on_update, update) < rounding
    # expand regenerates project's update bit for bit on any one device.
    assert torch.equal(rebuilt, on_update)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.Tanh(), nn.Linear(40, 10))


STEPS = {
    "sgd": dict(),
    "rbd": dict(compartments="layer"),
    "rbd-rademacher": dict(distribution="rademacher"),
    "rbd-srht": dict(distribution="srht"),
    "rbd-fastfood": dict(distribution="fastfood"),
    "fpd": dict(),
    "nes": dict(),
}


@pytest.mark.parametrize("name", STEPS)
def test_optimiser_steps_are_the_cpu_steps_to_rounding(name, device, device_path):
    """Two steps from the same gradients (NES: the same minibatch) on the CPU and on the
    device move the parameters alike, to float rounding."""
    method = name.split("-")[0]
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))
    reference, moved = small_net(), small_net().to(device)
    start = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    nn.functional.cross_entropy(reference(x), y).backward()
    grads = [p.grad.clone() for p in reference.parameters()]
    results = []
    for model, where in ((reference, torch.device("cpu")), (moved, device)):
        opt = build_optimizer(method, model.parameters(), lr=0.5, dim=12, seed=4, **STEPS[name])
        xs, ys = x.to(where), y.to(where)
        context = device_path() if model is moved else contextlib.nullcontext()
        with context:
            for _ in range(2):
                if method == "nes":
                    opt.step(lambda m=model, xs=xs, ys=ys: nn.functional.cross_entropy(m(xs), ys))
                    continue
                for p, g in zip(model.parameters(), grads, strict=True):
                    p.grad = g.to(where)
                opt.step()
        results.append(torch.cat([p.detach().cpu().reshape(-1) for p in model.parameters()]))
    assert not torch.equal(results[0], start)
    assert rel_err(results[1] - start, results[0] - start) < 1e-5


def test_a_training_run_on_the_device(tmp_path, device):
    """`rbd train`'s runner: one short augmented CNN epoch on the device, recorded there."""
    cfg = TrainConfig(
        method="rbd", model="cnn", dataset="mnist5k", dim=20, distribution="gaussian",
        lr=2.0, epochs=1, seed=0, augment=True, train_limit=96, device=str(device),
    )  # fmt: skip
    record = train(cfg, tmp_path / "run")
    assert record["status"] == "done" and torch.device(record["device"]).type == device.type
    written = json.loads((tmp_path / "run" / "run.json").read_text())
    assert written["device"] == record["device"]
    assert math.isfinite(written["final_val_acc"])
