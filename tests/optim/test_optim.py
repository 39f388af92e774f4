"""RBD, FPD and NES against dense and autograd references."""

import copy
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from rbd.bases import generate_directions, project
from rbd.optim import (
    FPD,
    METHODS,
    NES,
    RBD,
    build_optimizer,
    compartment_ranges,
    module_loss,
)
from tests.helpers import batch, dense_phi, flat_params, loss_of, small_model


def flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


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
        for a, b in zip(opt_a.subspace_coordinates, opt_b.subspace_coordinates, strict=True):
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


def unflatten(model, flat):
    out, offset = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


@pytest.mark.parametrize("compartments", ["none", "layer"])
def test_fpd_equals_autograd_on_coordinates(compartments):
    """FPD against training c in theta = theta_0 + Phi^T c by autograd."""
    model = small_model()
    x, y = batch()
    sizes = [p.numel() for p in model.parameters()]
    dim, lr, seed = 5, 0.5, 8
    theta0 = flat_params(model).double()
    # Block-diagonal Phi (d_total x D) built row by row from the seeds.
    blocks = [(0, sum(sizes))] if compartments == "none" else []
    if compartments == "layer":
        offset = 0
        for n in sizes:
            blocks.append((offset, offset + n))
            offset += n
    phi = torch.zeros(dim * len(blocks), sum(sizes), dtype=torch.float64)
    for k, (a, b) in enumerate(blocks):
        phi[k * dim : (k + 1) * dim, a:b] = dense_phi(seed, 0, k, dim, b - a) / math.sqrt(b - a)
    c = torch.zeros(phi.shape[0], dtype=torch.float64, requires_grad=True)

    opt = FPD(model.parameters(), lr=lr, dim=dim, seed=seed, compartments=compartments)
    reference = copy.deepcopy(model).double()
    for _ in range(3):
        theta = theta0 + phi.t() @ c
        loss = loss_of_params(reference, unflatten(reference, theta), x.double(), y)
        (grad_c,) = torch.autograd.grad(loss, c)
        with torch.no_grad():
            c -= lr * grad_c
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
    expected = (theta0 + phi.t() @ c).detach()
    got = flat_params(model).double()
    assert float((got - expected).norm() / (expected - theta0).norm()) < 1e-5
    coords = torch.cat(opt.subspace_coordinates).double()
    assert float((coords - c.detach()).norm() / c.detach().norm()) < 1e-5


def loss_of_params(model, params, x, y):
    return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)


def test_fpd_cache_gives_the_same_steps():
    results = []
    for cache in (False, True):
        model = small_model()
        opt = FPD(model.parameters(), lr=0.2, dim=6, seed=1, cache=cache)
        run_steps(opt, model, 3)
        results.append(flat_params(model))
    assert float((results[0] - results[1]).norm() / results[0].norm()) < 1e-6


class Quadratic(nn.Module):
    """L(theta) = 0.5 (theta - t)^T diag(s) (theta - t)."""

    def __init__(self, size=40):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.theta = nn.Parameter(torch.zeros(size))
        self.target = torch.randn(size, generator=gen)
        self.scales = torch.rand(size, generator=gen) + 0.5

    def forward(self):
        return 0.5 * (self.scales * (self.theta - self.target) ** 2).sum()


@pytest.mark.parametrize("antithetic", [False, True])
def test_nes_lowers_a_quadratic_and_correlates_with_the_gradient(antithetic):
    quad = Quadratic()
    opt = NES(quad.parameters(), lr=0.05, dim=40, seed=2, sigma=0.01, antithetic=antithetic)
    start = float(quad().detach())
    cosines = []
    for _ in range(40):
        before = quad.theta.detach().clone()
        opt.zero_grad()
        quad().backward()
        true_grad = quad.theta.grad.clone()
        opt.step(quad)
        step = before - quad.theta.detach()
        cosines.append(float(torch.dot(step, true_grad) / (step.norm() * true_grad.norm())))
        assert opt.stats["grad_corr"] == pytest.approx(cosines[-1], abs=1e-6)
    assert float(quad().detach()) < 0.5 * start
    assert sum(cosines) / len(cosines) > 0.2


def test_nes_without_gradients_reports_nan_correlation():
    quad = Quadratic()
    opt = NES(quad.parameters(), lr=0.05, dim=8, seed=2)
    opt.step(quad)
    assert math.isnan(opt.stats["grad_corr"])
    assert opt.stats["coord_mean"] == pytest.approx(0.0, abs=1e-12)


def fc_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def test_gaussian_correlation_matches_theory():
    model = fc_model()
    size = sum(p.numel() for p in model.parameters())
    assert size == 101_770
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(32, 1, 28, 28, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    opt = RBD(model.parameters(), lr=1.0, dim=250, seed=0)
    before = flat_params(model)
    loss_of(model, x, y).backward()
    g = flat_grad(model)
    opt.step()
    step = before - flat_params(model)
    cos = float(torch.dot(step.double(), g.double()) / (step.double().norm() * g.double().norm()))
    theory = math.sqrt(250 / (size + 250 + 1))
    assert abs(cos / theory - 1) < 0.1
    assert opt.stats["grad_corr"] == pytest.approx(cos, rel=1e-3)


def test_seeds_give_independent_bases():
    size, dim = 5000, 20
    a = dense_phi(0, 0, 0, dim, size)
    same = dense_phi(0, 0, 0, dim, size)
    assert torch.equal(a, same)
    for other in [
        dense_phi(1, 0, 0, dim, size),
        dense_phi(0, 1, 0, dim, size),
        dense_phi(0, 0, 1, dim, size),
        dense_phi(0, 0, 0, dim, size, worker=1),
    ]:
        cross = (a / a.norm(dim=1, keepdim=True)) @ (other / other.norm(dim=1, keepdim=True)).t()
        # Independent unit vectors in R^5000: cosines ~ N(0, 1/5000).
        assert float(cross.abs().max()) < 6 / math.sqrt(size)
        assert abs(float(cross.mean())) < 6 / math.sqrt(size * dim * dim)
    models = [small_model(), small_model(), small_model()]
    opts = [
        RBD(m.parameters(), lr=0.1, dim=4, seed=s) for m, s in zip(models, (5, 5, 6), strict=True)
    ]
    for m, o in zip(models, opts, strict=True):
        run_steps(o, m, 1)
    assert torch.equal(flat_params(models[0]), flat_params(models[1]))
    assert not torch.equal(flat_params(models[0]), flat_params(models[2]))


def test_compression_and_coordinate_count():
    model = fc_model()
    opt = RBD(model.parameters(), lr=0.1, dim=250, compartments="compression:10")
    # Tensors of 100352, 128, 1280 and 10 weights.
    assert [c.dim for c in opt.compartments] == [10036, 13, 128, 10]
    assert opt.num_coordinates == 10187
    assert opt.compression == pytest.approx(101_770 / 10187)
    opt = RBD(model.parameters(), lr=0.1, dim=250, compartments="layer")
    assert opt.num_coordinates == 1000 and opt.num_params == 101_770


def test_stats_equal_a_dense_computation():
    model = small_model()
    x, y = batch()
    size = sum(p.numel() for p in model.parameters())  # 131: chunks of 50, 50, 31
    theta = flat_params(model).double()
    opt = RBD(model.parameters(), lr=0.1, dim=4, seed=3, compartments="chunk:50")
    opt.zero_grad()
    loss_of(model, x, y).backward()
    g = flat_grad(model).double()
    opt.step()
    u = theta - flat_params(model).double()
    coords = []
    for k, start in enumerate(range(0, size, 50)):
        part = slice(start, min(start + 50, size))
        n = part.stop - part.start
        coords.append(dense_phi(3, 0, k, 4, n) @ g[part] / math.sqrt(n))
    coords = torch.cat(coords)
    assert all(isinstance(v, float) for v in opt.stats.values())
    assert opt.stats["grad_corr"] == pytest.approx(float(u @ g / (u.norm() * g.norm())), abs=1e-5)
    assert opt.stats["coord_mean"] == pytest.approx(float(coords.mean()), abs=1e-6)
    assert opt.stats["coord_std"] == pytest.approx(float(coords.std()), rel=1e-5)


def test_param_groups_and_parameters_without_gradients():
    model = small_model()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = RBD(
        [{"params": first}, {"params": second, "lr": 0.0}], lr=0.1, dim=3, compartments="layer"
    )
    assert [(c.group, c.index, c.size) for c in opt.compartments] == [
        (0, 0, 96),
        (0, 1, 8),
        (1, 2, 24),
        (1, 3, 3),
    ]
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch()
    loss_of(model, x, y).backward()
    model[0].bias.grad = None
    opt.step()
    after = list(model.parameters())
    assert not torch.equal(before[0], after[0])  # updated
    assert torch.equal(before[1], after[1])  # no gradient: untouched
    assert torch.equal(before[2], after[2]) and torch.equal(before[3], after[3])  # lr 0


PEAK_RSS_CHILD = """
import sys, torch
from rbd.optim import RBD
def vm_hwm_kib():  # peak RSS of this process (ru_maxrss also holds the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
size, method = 1_000_000, sys.argv[1]
param = torch.nn.Parameter(torch.randn(size))
param.grad = torch.randn(size)
if method == "sgd":
    opt = torch.optim.SGD([param], lr=0.1)
else:
    opt = RBD([param], lr=0.1, dim=1000, distribution=method)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark: only the step's peak counts
before = vm_hwm_kib()
opt.step()
print(vm_hwm_kib() - before)
"""


@pytest.mark.slow
def test_rbd_adds_little_peak_memory_at_a_million_parameters():
    growth = {}
    for method in ("sgd", "gaussian"):
        out = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_CHILD, method],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        growth[method] = int(out.stdout.split()[-1]) / 1024  # KiB -> MiB
    # A materialised 1000 x 10^6 float32 matrix alone would be 4000 MB; the
    # step needs a few D-vectors (flat gradient, update, per-worker parts).
    assert 4 < growth["gaussian"] - growth["sgd"] < 150


@pytest.mark.parametrize(
    ("distribution", "normalize", "compartments"),
    [
        ("gaussian", True, "none"),
        ("gaussian", False, "layer"),
        ("rademacher", True, "chunk:50"),
        ("srht", True, "none"),
        ("fastfood", False, "layer"),
    ],
)
def test_forward_mode_coordinates_equal_backward_then_project(
    distribution, normalize, compartments
):
    """c_i as d directional derivatives (torch.func.jvp, no backward pass) equal
    the coordinates Phi g from a backward pass, and so do the steps."""
    models = [small_model(), small_model()]
    kwargs = dict(lr=0.3, dim=9, distribution=distribution, seed=2, normalize=normalize,
                  compartments=compartments, chunk_size=4)  # fmt: skip
    backward = RBD(models[0].parameters(), **kwargs)
    forward = RBD(models[1].parameters(), derivatives="forward", **kwargs)
    for step in range(3):
        x, y = batch(step)
        backward.zero_grad()
        loss_b = loss_of(models[0], x, y)
        loss_b.backward()
        backward.step()
        closure = module_loss(models[1], lambda out, y=y: nn.functional.cross_entropy(out, y), x)
        assert abs(float(forward.step(closure)) - float(loss_b)) < 1e-5
        a, b = flat_params(models[0]), flat_params(models[1])
        assert float((a - b).norm() / a.norm()) < 1e-6
    # The coordinates themselves, recovered from one step by least squares on
    # the materialised directions: update = lr * Phi^T c (/ d unnormalised).
    x, y = batch(9)
    model, ref_model = small_model(), small_model()
    opt = RBD(model.parameters(), derivatives="forward", **kwargs)
    opt.step(module_loss(model, lambda out: nn.functional.cross_entropy(out, y), x))
    loss_of(ref_model, x, y).backward()
    g = flat_grad(ref_model)
    moved = flat_params(ref_model) - flat_params(model)
    for comp in opt.compartments:
        seeds = opt.seeds(comp, 0)
        phi = generate_directions(seeds, comp.size, distribution).double()
        phi = phi / math.sqrt(comp.size) if normalize else phi / comp.dim
        part = moved[comp.start : comp.stop].double() / 0.3
        c = torch.linalg.lstsq(phi.t(), part.unsqueeze(1)).solution.squeeze(1)
        ref = project(g[comp.start : comp.stop], seeds, distribution, normalize=normalize)[0]
        assert float((c - ref.double()).norm() / ref.double().norm()) < 1e-4
    assert math.isnan(opt.stats["grad_corr"])  # no gradient to compare with


def test_forward_mode_needs_a_closure_and_a_known_mode():
    model = small_model()
    with pytest.raises(ValueError, match="closure"):
        RBD(model.parameters(), dim=3, derivatives="forward").step()
    with pytest.raises(ValueError, match="derivatives"):
        RBD(model.parameters(), dim=3, derivatives="sideways")
    opt = build_optimizer("rbd", model.parameters(), lr=0.1, dim=3, derivatives="forward")
    assert opt.derivatives == "forward"


@pytest.mark.parametrize("population", [7, 5])
def test_nes_offspring_on_own_minibatches_equals_dense_computation(population):
    """The authors' NES: offspring i scored on minibatch i; ranks, 1/(sigma n), dense eps."""
    model, dim, sigma, lr = small_model(), 7, 0.05, 0.2
    batches = [batch(seed=10 + i) for i in range(population)]
    theta = flat_params(model).double()
    eps = dense_phi(4, 0, 0, population, theta.numel())  # the first n of step 0's seeds
    reference = copy.deepcopy(model)
    fitness = []
    for i, (x, y) in enumerate(batches):
        with torch.no_grad():
            nn.utils.vector_to_parameters((theta + sigma * eps[i]).float(), reference.parameters())
            fitness.append(float(loss_of(reference, x, y)))
    order = sorted(range(population), key=fitness.__getitem__)  # lowest loss first
    weights = torch.empty(population, dtype=torch.float64)
    for rank, i in enumerate(order):
        weights[i] = rank / (population - 1) - 0.5  # highest loss +0.5
    want = theta - lr / (sigma * population) * (weights[:, None] * eps).sum(0)

    opt = NES(model.parameters(), lr=lr, dim=dim, seed=4, sigma=sigma)
    closures = [lambda x=x, y=y: loss_of(model, x, y) for x, y in batches]
    loss = opt.step(offspring=closures)
    torch.testing.assert_close(flat_params(model).double(), want, rtol=0, atol=1e-6)
    assert loss == pytest.approx(sum(fitness) / population, rel=1e-5)
    assert opt.param_groups[0]["step"] == 1


def test_nes_step_rejects_too_many_offspring_and_no_closure():
    model = small_model()
    opt = NES(model.parameters(), lr=0.1, dim=3)
    x, y = batch()
    with pytest.raises(ValueError, match="4 offspring closures for dim=3"):
        opt.step(offspring=[lambda: loss_of(model, x, y)] * 4)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()
