"""Structured random bases (srht, fastfood) against dense references.

The Hadamard matrix is built here independently of the engine, by
Sylvester's recursion with numpy's Kronecker product; the engine's random
factors (signs, rows, G, Pi, S) are read from ``StructuredBlocks`` and the
dense Phi is assembled from them with plain matrix products.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from rbd.bases import (
    STRUCTURED,
    StructuredBlocks,
    expand,
    fwht,
    fwht_head,
    fwht_tail,
    generate_directions,
    padded_size,
    placement,
    project,
    step_seeds,
)
from rbd.optim import FPD, NES, RBD


def hadamard(n):
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h


def dense_phi(seeds, size, distribution):
    """Raw Phi [d, size] assembled from the engine's factors with dense matrices."""
    blocks = StructuredBlocks(seeds, size, distribution, torch.device("cpu"))
    n, k = blocks.n, blocks.rows
    h = hadamard(n)
    rows = []
    for b in range(blocks.blocks):
        signs = np.diag(blocks.signs[b].double().numpy())
        if distribution == "srht":
            v = (h @ signs)[blocks.selected[b].numpy()]
        else:
            perm = np.zeros((n, n))
            perm[np.arange(n), blocks.perm[b].numpy()] = 1.0  # (Pi y)_j = y[perm_j]
            g = np.diag(blocks.gaussian[b].double().numpy())
            s = np.diag(blocks.row_scale[b].double().numpy())
            v = s @ (h @ g @ perm @ h @ signs)[:k]
        slots = blocks.placement.numpy() if blocks.placement is not None else np.arange(n)
        rows.append(v[:, slots])
    return np.concatenate(rows)[: len(seeds)]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256])
def test_fwht_equals_dense_hadamard_product(n):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(n))
    expected = x.double().numpy() @ hadamard(n)
    assert rel_err(fwht(x).numpy(), expected) < 1e-6
    assert rel_err(fwht(x[0]).numpy(), expected[0]) < 1e-6  # 1-D input
    k = max(1, n // 4 + 1) if n > 1 else 1
    assert rel_err(fwht_head(x, k).numpy(), expected[:, :k]) < 1e-6
    width = padded_size(k) if k <= n else n
    head = torch.zeros(3, n)
    head[:, :width] = x[:, :width]
    assert rel_err(fwht_tail(x[:, :width], n).numpy(), fwht(head).numpy()) < 1e-6


def test_fwht_rejects_other_lengths():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.ones(6))


def test_placement_is_a_fixed_sorted_subset():
    slots = placement(1000)
    assert slots.shape == (1000,) and torch.equal(slots, placement(1000))
    assert bool((slots[1:] > slots[:-1]).all()) and 0 <= int(slots[0]) and int(slots[-1]) < 1024
    assert placement(1024) is None


def test_padded_size():
    assert [padded_size(n) for n in (0, 1, 2, 3, 64, 65, 101_770)] == [1, 1, 2, 4, 64, 128, 131_072]


CASES = [(1000, 37), (1024, 1024), (100, 300), (1, 3), (65, 7)]


@pytest.mark.parametrize("distribution", STRUCTURED)
@pytest.mark.parametrize(("size", "dim"), CASES)
@pytest.mark.parametrize("normalize", [True, False])
def test_project_equals_the_dense_matrix(distribution, size, dim, normalize):
    g = torch.randn(size, generator=torch.Generator().manual_seed(size + dim))
    seeds = step_seeds(3, 1, 0, 0, dim)
    phi = dense_phi(seeds, size, distribution)
    assert rel_err(generate_directions(seeds, size, distribution).numpy(), phi) < 1e-6
    if normalize:
        phi = phi / math.sqrt(size)
    c_ref = phi @ g.double().numpy()
    u_ref = phi.T @ c_ref / (1 if normalize else dim)
    c, u = project(g, seeds, distribution, normalize=normalize)
    assert rel_err(c.numpy(), c_ref) < 1e-5
    assert rel_err(u.numpy(), u_ref) < 1e-5
    assert torch.equal(expand(c, seeds, size, distribution, normalize=normalize), u)


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_projection_and_transpose_are_adjoint(distribution):
    gen = torch.Generator().manual_seed(0)
    size, dim = 5000, 300
    seeds = step_seeds(1, 0, 0, 0, dim)
    for _ in range(3):
        x, y = torch.randn(size, generator=gen), torch.randn(dim, generator=gen)
        px = project(x, seeds, distribution)[0]
        pty = expand(y, seeds, size, distribution)
        lhs, rhs = (
            float(torch.dot(px.double(), y.double())),
            float(torch.dot(x.double(), pty.double())),
        )
        assert abs(lhs - rhs) < 1e-5 * float(px.norm() * y.norm())


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_directions_have_unit_norm_and_are_nearly_orthogonal(distribution):
    size, dim = 20_000, 200
    phi = generate_directions(step_seeds(2, 0, 0, 0, dim), size, distribution).double()
    phi = phi / math.sqrt(size)  # normalize=True: E[|phi_i|^2] = 1
    gram = phi @ phi.t()
    norms = gram.diagonal()
    off = gram - torch.diag(norms)
    if distribution == "srht":
        assert torch.allclose(norms, torch.ones(dim, dtype=torch.float64))
        assert set(phi.mul(math.sqrt(size)).unique().tolist()) == {-1.0, 1.0}
    else:
        # chi_N row lengths over N = 32,768 columns, truncated to D: ~1 +- 1%.
        assert abs(float(norms.mean()) - 1) < 0.01 and float((norms - 1).abs().max()) < 0.05
    # Gaussian rows: off-diagonals of rms 1/sqrt(D) (0.0071), max ~4.5/sqrt(D)
    # here. srht: rms sqrt((N - D) / N) / sqrt(D) (orthogonal on all N slots);
    # fastfood: sqrt(2 D / N + (N - D) / N) / sqrt(D), 1.27/sqrt(D) here, the
    # extra from the shared G (Var G^2 = 2 in H G^2 H), inherent to Fastfood.
    rms = {"srht": math.sqrt((32_768 - size) / 32_768), "fastfood": 1.27}[distribution]
    assert abs(float(off.square().mean().sqrt()) * math.sqrt(size) - rms) < 0.15
    assert float(off.abs().max()) < 8 / math.sqrt(size)


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_expected_gram_is_d_over_D_times_identity(distribution):
    """E[Phi^T Phi] = d/D I under normalize=True, as for Gaussian bases: the
    diagonal averages d/D at every coordinate, the off-diagonal averages 0."""
    size, dim, steps = 300, 40, 400
    total = torch.zeros(size, size, dtype=torch.float64)
    for t in range(steps):
        phi = generate_directions(step_seeds(5, t, 0, 0, dim), size, distribution).double()
        total += phi.t() @ phi / size
    mean = total / steps
    diag = mean.diagonal()
    target = dim / size
    assert abs(float(diag.mean()) - target) < 0.02 * target
    assert float((diag - target).abs().max()) < 0.25 * target
    off = mean - torch.diag(diag)
    # Per-step off-diagonal sd ~ sqrt(d)/D; averaged over the steps.
    assert float(off.abs().max()) < 6 * math.sqrt(dim) / size / math.sqrt(steps)


def fc_gradient(seed=0):
    """A real minibatch gradient of the paper's FC net (D = 101,770) on MNIST-like
    inputs with a blank border, so that many entries are exactly zero."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 4:24, 4:24] = torch.rand(32, 1, 20, 20)
    y = torch.randint(0, 10, (32,))
    nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_one_step_gradient_correlation_is_the_gaussian_value(distribution):
    g = fc_gradient()
    size, dim = g.numel(), 250
    expected = math.sqrt(dim / (size + dim + 1))  # 0.0495, the Gaussian value
    corrs = []
    for t in range(8):
        _, u = project(g, step_seeds(0, t, 0, 0, dim), distribution)
        corrs.append(float(torch.dot(u.double(), g.double()) / (u.double().norm() * g.norm())))
    assert abs(np.mean(corrs) - expected) < 0.1 * expected
    assert max(abs(c - expected) for c in corrs) < 0.15 * expected


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_update_has_the_gaussian_expected_size(distribution):
    g = fc_gradient(1)
    dim = 250
    ratios = []
    for t in range(6):
        seeds = step_seeds(0, t, 0, 0, dim)
        u = project(g, seeds, distribution)[1].norm()
        ratios.append(float(u / project(g, seeds, "gaussian")[1].norm()))
    assert abs(np.mean(ratios) - 1) < 0.1


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_raw_entries_have_unit_second_moment(distribution):
    x = generate_directions(step_seeds(4, 0, 0, 0, 64), 4096, distribution).double().flatten()
    assert abs(float(x.mean())) < 5 / math.sqrt(x.numel())
    assert abs(float(x.square().mean()) - 1) < 0.03
    if distribution == "fastfood":  # close to N(0, 1): fourth moment 3
        assert abs(float(x.pow(4).mean()) - 3) < 0.3


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_block_is_a_pure_function_of_its_first_seed(distribution):
    size = 100  # N = 128: directions [0, 128) and [128, 200) form two blocks
    seeds = step_seeds(7, 3, 1, 0, 200)
    g = torch.randn(size, generator=torch.Generator().manual_seed(1))
    ref = project(g, seeds, distribution)
    others = list(seeds)
    others[5], others[150] = 12345, 67890  # not a block's first seed: no effect
    assert all(
        torch.equal(a, b) for a, b in zip(ref, project(g, others, distribution), strict=True)
    )
    others[128] = 1  # block 1's seed: changes only its coordinates
    c = project(g, others, distribution)[0]
    assert torch.equal(c[:128], ref[0][:128]) and not torch.equal(c[128:], ref[0][128:])
    # Row j of a block does not depend on how many rows the block has.
    rows = generate_directions(seeds, size, distribution)
    assert torch.equal(generate_directions(seeds[:50], size, distribution), rows[:50])
    assert rel_err(project(g, seeds[:50], distribution)[0].numpy(), ref[0][:50].numpy()) < 1e-6


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_deterministic_whatever_threads_chunks_and_workers(distribution):
    g = fc_gradient(2)
    seeds = step_seeds(1, 1, 0, 0, 250)
    ref = project(g, seeds, distribution, threads=1)
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for kwargs in ({}, {"chunk_size": 3, "threads": 2}):
                c, u = project(g, seeds, distribution, **kwargs)
                assert torch.equal(c, ref[0]) and torch.equal(u, ref[1])
                assert torch.equal(expand(c, seeds, g.numel(), distribution, **kwargs), ref[1])
    finally:
        torch.set_num_threads(old)
    assert not torch.equal(project(g, step_seeds(1, 2, 0, 0, 250), distribution)[0], ref[0])


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))


def loss_of(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    return nn.functional.cross_entropy(model(x), y)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()


@pytest.mark.parametrize("distribution", STRUCTURED)
@pytest.mark.parametrize("compartments", ["none", "layer"])
def test_rbd_step_uses_the_materialised_directions(distribution, compartments):
    model = small_model()
    opt = RBD(model.parameters(), lr=0.5, dim=20, distribution=distribution, seed=3,
              compartments=compartments)  # fmt: skip
    for step in range(2):
        opt.zero_grad()
        loss_of(model).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
        expected = flat(model)
        for comp in opt.compartments:
            phi = generate_directions(opt.seeds(comp, step), comp.size, distribution).double()
            phi /= math.sqrt(comp.size)
            part = g[comp.start : comp.stop]
            expected[comp.start : comp.stop] -= 0.5 * phi.t() @ (phi @ part)
        opt.step()
        assert rel_err(flat(model).numpy(), expected.numpy()) < 1e-6
    assert 0 < opt.stats["grad_corr"] <= 1


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_fpd_cache_and_regeneration_agree(distribution):
    models = [small_model(), small_model()]
    opts = [FPD(m.parameters(), lr=0.5, dim=10, distribution=distribution, seed=1, cache=c)
            for m, c in zip(models, (False, True), strict=True)]  # fmt: skip
    for _ in range(3):
        for m, opt in zip(models, opts, strict=True):
            opt.zero_grad()
            loss_of(m).backward()
            opt.step()
    assert rel_err(flat(models[1]).numpy(), flat(models[0]).numpy()) < 1e-6
    theta0 = flat(small_model())
    phi = opts[0].directions(opts[0].compartments[0]).double()
    # theta = theta_0 + Phi^T c, with Phi fixed.
    implied = theta0 + phi.t() @ opts[0].subspace_coordinates[0].double()
    assert rel_err(flat(models[0]).numpy(), implied.numpy()) < 1e-5


@pytest.mark.parametrize("distribution", STRUCTURED)
def test_nes_runs_with_structured_perturbations(distribution):
    model = small_model()
    opt = NES(model.parameters(), lr=0.01, dim=8, distribution=distribution, seed=0)
    before = flat(model)
    with torch.no_grad():
        opt.step(lambda: loss_of(model))
    assert not torch.equal(flat(model), before)
    assert math.isfinite(opt.stats["loss"])
