"""The random-bases engine against independent references.

Per-row properties hold for the dense distributions (``DENSE``); the
structured ones (srht, fastfood) have their own tests in test_structured.py.
"""

import math

import numpy as np
import pytest
import torch

from rbd.bases import (
    DENSE,
    DISTRIBUTIONS,
    direction_seed,
    expand,
    generate_directions,
    project,
    step_seeds,
)


@pytest.fixture(autouse=True, params=["compiled", "eager"])
def engine(request, monkeypatch):
    """Every test here on both paths: the compiled kernels and the eager torch ops."""
    monkeypatch.setenv("RBD_ENGINE", request.param)
    return request.param


def seeds_for(dim, seed=0, step=0, compartment=0, worker=0):
    return [direction_seed(seed, step, compartment, worker, i) for i in range(dim)]


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def test_direction_seed_is_pure_63_bit_and_matches_step_seeds():
    s = direction_seed(3, 7, 1, 2, 5)
    assert s == direction_seed(3, 7, 1, 2, 5)
    assert 0 <= s < 2**63
    assert step_seeds(3, 7, 1, 2, 6)[5] == s
    # step_seeds inlines the hash for speed: every index, not only one, must agree.
    assert step_seeds(3, 7, 1, 2, 300) == [direction_seed(3, 7, 1, 2, i) for i in range(300)]
    # Every argument matters.
    others = {
        direction_seed(*args)
        for args in [
            (4, 7, 1, 2, 5),
            (3, 8, 1, 2, 5),
            (3, 7, 0, 2, 5),
            (3, 7, 1, 3, 5),
            (3, 7, 1, 2, 4),
        ]
    }
    assert s not in others and len(others) == 5


@pytest.mark.parametrize("distribution", DENSE)
def test_rows_depend_only_on_their_seed(distribution):
    seeds = seeds_for(5)
    together = generate_directions(seeds, 1001, distribution)
    for i, s in enumerate(seeds):
        alone = generate_directions([s], 1001, distribution)[0]
        assert torch.equal(together[i], alone)
    reordered = generate_directions(seeds[::-1], 1001, distribution)
    assert torch.equal(reordered, together.flip(0))


@pytest.mark.parametrize("distribution", DENSE)
@pytest.mark.parametrize("normalize", [True, False])
def test_project_matches_dense_matrix(distribution, normalize):
    torch.manual_seed(0)
    size, dim = 3001, 37
    g = torch.randn(size)
    seeds = seeds_for(dim, seed=11)
    phi = torch.stack([generate_directions([s], size, distribution)[0] for s in seeds]).double()
    if normalize:
        phi = phi / math.sqrt(size)
    c_ref = phi @ g.double()
    u_ref = phi.t() @ c_ref
    if not normalize:
        u_ref = u_ref / dim
    c, u = project(g, seeds, distribution, normalize=normalize, chunk_size=8)
    assert rel_err(c, c_ref) < 1e-5
    assert rel_err(u, u_ref) < 1e-5


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_chunk_size_does_not_change_result(distribution):
    torch.manual_seed(1)
    size, dim = 2049, 24
    g = torch.randn(size)
    seeds = seeds_for(dim, seed=5)
    results = [project(g, seeds, distribution, chunk_size=k) for k in (1, 8, dim)]
    c0, u0 = results[0]
    for c, u in results[1:]:
        assert rel_err(c, c0) < 1e-6
        assert rel_err(u, u0) < 1e-6


@pytest.mark.parametrize("threads", [1, 2])
def test_directions_do_not_depend_on_threads(threads):
    seeds = seeds_for(3, seed=9)
    ref = {d: generate_directions(seeds, 70001, d) for d in DISTRIBUTIONS}
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for d in DISTRIBUTIONS:
            assert torch.equal(generate_directions(seeds, 70001, d), ref[d])
    finally:
        torch.set_num_threads(old)


# (mean, variance, fourth central moment) of each distribution.
MOMENTS = {
    "gaussian": (0.0, 1.0, 3.0),
    "uniform": (0.0, 1.0 / 3.0, 1.0 / 5.0),
    "rademacher": (0.0, 1.0, 1.0),
    "bernoulli-official": (-0.5, 1.0, 1.0),
}


@pytest.mark.parametrize("distribution", DENSE)
def test_sample_moments_match_theory(distribution):
    x = generate_directions(seeds_for(10, seed=2), 100_000, distribution).double().flatten()
    n = x.numel()
    mean, var, m4 = MOMENTS[distribution]
    # Five standard errors, from the distribution's own higher moments.
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / n)
    # Two-valued draws: x^2 is constant, so only the mean's O(1/n) square
    # moves the sample variance.
    assert abs(float(x.var()) - var) < 5 * math.sqrt((m4 - var**2) / n) + 25 / n
    if distribution == "gaussian":
        assert abs(float((x**4).mean()) - 3.0) < 5 * math.sqrt((105 - 9) / n)
        # Same fraction beyond 2 sigma as N(0, 1): 4.55%.
        assert abs(float((x.abs() > 2).double().mean()) - 0.0455) < 0.002
    if distribution in ("rademacher", "bernoulli-official"):
        assert set(x.unique().tolist()) == (
            {-1.0, 1.0} if distribution == "rademacher" else {-1.5, 0.5}
        )
    if distribution == "uniform":
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_unknown_distribution_is_rejected():
    with pytest.raises(ValueError, match="distribution"):
        generate_directions([1], 10, "cauchy")


def raw_words(seed, count):
    """Words 0..count-1 of the splitmix64 stream of ``seed`` (Steele, Lea and Flood 2014:
    state += 0x9E3779B97F4A7C15, then the finaliser), in Python integers: uint64."""
    mask = (1 << 64) - 1
    out = []
    for k in range(1, count + 1):
        z = (seed + k * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return np.array(out, dtype=np.uint64)


def test_gaussian_rows_are_normal_quantiles_of_the_raw_bits():
    """Value t = the (u + 1/2) / 2^16 normal quantile of 16-bit word t, from Python's
    own inverse CDF (statistics.NormalDist), rescaled to unit variance."""
    from statistics import NormalDist

    size = 1000
    width = 1024  # 64 * ceil(size / 64)
    seed = direction_seed(1, 2, 3, 4, 5)
    halfwords = raw_words(seed, width // 4).view("<u2")
    levels = 2**16
    quantiles = np.array([NormalDist().inv_cdf((u + 0.5) / levels) for u in range(levels)])
    quantiles /= np.sqrt(np.mean(quantiles**2))
    expected = quantiles[halfwords][:size]
    got = generate_directions([seed], size, "gaussian")[0].double().numpy()
    assert np.max(np.abs(got - expected)) < 1e-5


def test_gaussian_is_close_to_normal_in_distribution():
    """Kolmogorov-Smirnov distance to N(0, 1) over 10^6 draws is at the sampling-noise level."""
    from statistics import NormalDist

    x = np.sort(
        generate_directions(seeds_for(10, seed=5), 100_000, "gaussian").double().numpy().ravel()
    )
    cdf = np.array([NormalDist().cdf(v) for v in x[::97]])
    empirical = (np.arange(len(x))[::97] + 0.5) / len(x)
    assert np.max(np.abs(cdf - empirical)) < 2.0 / np.sqrt(len(x))


@pytest.mark.parametrize("distribution", ["rademacher", "bernoulli-official"])
def test_sign_rows_follow_the_raw_bits(distribution):
    size = 300
    seed = direction_seed(7, 0, 0, 0, 1)
    bits = np.unpackbits(raw_words(seed, 5).view(np.uint8), bitorder="little")[:size]
    high, low = (1.0, -1.0) if distribution == "rademacher" else (0.5, -1.5)
    expected = np.where(bits == 1, low, high)
    got = generate_directions([seed], size, distribution)[0].numpy()
    assert np.array_equal(got, expected)


def test_uniform_rows_follow_the_raw_bits():
    size = 500
    seed = direction_seed(7, 0, 0, 0, 2)
    words = raw_words(seed, 256).view(np.uint32).astype(np.float64)
    expected = 2.0 * (1.0 + np.mod(words, 2**23) / 2**23) - 3.0
    got = generate_directions([seed], size, "uniform")[0].double().numpy()
    assert np.array_equal(got, expected[:size])


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_worker_threads_do_not_change_the_result(distribution):
    torch.manual_seed(2)
    g = torch.randn(20_000)
    seeds = seeds_for(30, seed=3)
    one = project(g, seeds, distribution, chunk_size=4, threads=1)
    for _ in range(2):
        # Fixed chunk size and threads: bit for bit.
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                one, project(g, seeds, distribution, chunk_size=4, threads=1), strict=True
            )
        )
    three = project(g, seeds, distribution, chunk_size=4, threads=3)
    assert torch.equal(three[0], one[0])  # coordinates do not depend on threads
    assert rel_err(three[1], one[1]) < 1e-6
    again = project(g, seeds, distribution, chunk_size=4, threads=3)
    assert torch.equal(again[1], three[1])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_expand_rebuilds_the_update_from_coordinates(distribution):
    torch.manual_seed(4)
    g = torch.randn(7000)
    seeds = seeds_for(40, seed=6)
    coords, update = project(g, seeds, distribution)
    assert torch.equal(expand(coords, seeds, g.numel(), distribution), update)
    c = torch.randn(40, dtype=torch.float64)
    phi = generate_directions(seeds, g.numel(), distribution).double() / math.sqrt(g.numel())
    assert rel_err(expand(c.float(), seeds, g.numel(), distribution), phi.t() @ c) < 1e-5


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_coordinates_alone_equal_projects_coordinates(distribution):
    """project_coordinates() is project()'s first output, bit for bit, without the update."""
    from rbd.bases import project_coordinates

    g = torch.randn(5000, generator=torch.Generator().manual_seed(9))
    seeds = seeds_for(37, seed=2)
    for kwargs in ({}, {"normalize": False}, {"chunk_size": 5, "threads": 2}):
        assert torch.equal(
            project_coordinates(g, seeds, distribution, **kwargs),
            project(g, seeds, distribution, **kwargs)[0],
        )
