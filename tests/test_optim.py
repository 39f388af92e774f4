"""RBD, FPD and NES against dense and autograd references."""

import copy
import math

import pytest
import torch
from torch import nn

from rbd.optim import FPD, METHODS, NES, RBD, build_optimizer, compartment_ranges
from rbd.projection import direction_seed, generate_directions


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def loss_of(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def dense_phi(seed, step, compartment, dim, size, distribution="gaussian", worker=0):
    seeds = [direction_seed(seed, step, compartment, worker, i) for i in range(dim)]
    return generate_directions(seeds, size, distribution).double()


def test_methods_and_sgd():
    assert METHODS == ("sgd", "rbd", "fpd", "nes")
    opt = build_optimizer(
        "sgd", small_model().parameters(), lr=0.1, dim=5, distribution="gaussian", seed=0
    )
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["momentum"] == 0


@pytest.mark.parametrize("normalize", [True, False])
def test_rbd_step_equals_dense_computation(normalize):
    model = small_model()
    x, y = batch()
    size = sum(p.numel() for p in model.parameters())
    opt = build_optimizer(
        "rbd",
        model.parameters(),
        lr=0.3,
        dim=7,
        distribution="gaussian",
        seed=4,
        normalize=normalize,
    )
    theta = flat_params(model).double()
    for step in range(2):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        g = flat_grad(model).double()
        phi = dense_phi(4, step, 0, 7, size)
        if normalize:
            phi = phi / math.sqrt(size)
            expected = theta - 0.3 * phi.t() @ (phi @ g)
        else:
            expected = theta - 0.3 * phi.t() @ (phi @ g) / 7
        opt.step()
        theta = flat_params(model).double()
        assert float((theta - expected).norm() / expected.norm()) < 1e-6
    assert set(opt.stats) >= {"grad_corr", "coord_mean", "coord_std"}


def run_steps(opt, model, n, closure=False):
    x, y = batch()
    for _ in range(n):
        opt.zero_grad()
        if closure:
            opt.step(lambda: loss_of(model, x, y))
        else:
            loss_of(model, x, y).backward()
            opt.step()


@pytest.mark.parametrize("method", ["rbd", "fpd", "nes"])
def test_resume_from_state_dict_is_exact(method):
    kwargs = dict(lr=0.05, dim=6, distribution="gaussian", seed=3)
    closure = method == "nes"
    model_a = small_model()
    opt_a = build_optimizer(method, model_a.parameters(), **kwargs)
    run_steps(opt_a, model_a, 3, closure)
    saved_model = copy.deepcopy(model_a.state_dict())
    saved_opt = copy.deepcopy(opt_a.state_dict())
    run_steps(opt_a, model_a, 2, closure)

    model_b = small_model(seed=99)
    model_b.load_state_dict(saved_model)
    opt_b = build_optimizer(method, model_b.parameters(), **kwargs)
    opt_b.load_state_dict(saved_opt)
    run_steps(opt_b, model_b, 2, closure)
    assert torch.equal(flat_params(model_a), flat_params(model_b))
    if method == "fpd":
        for a, b in zip(opt_a.coordinates, opt_b.coordinates, strict=True):
            assert torch.equal(a, b)


def test_compartments_cover_every_parameter_once():
    sizes = [120, 10, 33, 3]
    for spec in ["none", "layer", "chunk:7", "chunk:1000", "compression:4", "compression:2.5"]:
        ranges = compartment_ranges(spec, sizes, 5)
        covered = torch.zeros(sum(sizes), dtype=torch.int64)
        for a, b, _ in ranges:
            covered[a:b] += 1
        assert torch.equal(covered, torch.ones_like(covered)), spec
    dims = [k for _, _, k in compartment_ranges("compression:4", sizes, 5)]
    assert dims == [30, 10, 10, 10]
    dims = [k for _, _, k in compartment_ranges("compression:2.5", sizes, 5)]
    assert dims == [48, 10, 14, 10]


def test_hyperparameters_are_validated():
    params = small_model().parameters
    for kwargs, name in [
        (dict(lr=-1.0), "learning rate"),
        (dict(dim=0), "dim"),
        (dict(distribution="cauchy"), "distribution"),
        (dict(seed=-1), "seed"),
        (dict(compartments="chunk:0"), "compartments"),
        (dict(compartments="blocks"), "compartments"),
    ]:
        with pytest.raises(ValueError, match=name):
            RBD(params(), **kwargs)
    with pytest.raises(ValueError, match="sigma"):
        NES(params(), sigma=0.0)
    with pytest.raises(ValueError, match="method"):
        build_optimizer("adam", params(), lr=0.1, dim=3)
    assert isinstance(FPD(params()), torch.optim.Optimizer)
