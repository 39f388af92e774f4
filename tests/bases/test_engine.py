"""The engine's two paths (compiled kernels, eager torch ops) draw the same bases, and a
step's dispatched ops do not grow with d."""

import hashlib
import os
import platform
import subprocess
import sys

import pytest
import torch

from rbd.bases import (
    DENSE,
    default_chunk_size,
    expand,
    generate_directions,
    native,
    project,
    project_coordinates,
    step_seeds,
)

SIZE = 3001  # not a multiple of 64, 32 or the kernels' block


def _with_engine(monkeypatch, choice, fn):
    monkeypatch.setenv("RBD_ENGINE", choice)
    try:
        return fn()
    finally:
        monkeypatch.delenv("RBD_ENGINE")


def _columns(seeds, size, distribution, chunk_size, threads):
    """Phi's columns as ``project`` sees them: for g = e_j (raw rows, normalize=False),
    c_i = <phi_i, e_j> = phi_ij exactly, since every other product is 0 * x."""
    cols = []
    for j in (0, 1, 63, 64, 1023, 1024, 2047, size - 1):
        g = torch.zeros(size)
        g[j] = 1.0
        coords, _ = project(
            g, seeds, distribution, normalize=False, chunk_size=chunk_size, threads=threads
        )
        cols.append(coords)
    return torch.stack(cols)


@pytest.mark.parametrize("distribution", DENSE)
def test_compiled_and_eager_paths_draw_the_same_bits(distribution, monkeypatch):
    if native.library() is None:
        pytest.skip("no C compiler here: only the eager path exists")
    seeds = step_seeds(11, 3, 0, 0, 20)
    dim = len(seeds)
    rows = {
        choice: _with_engine(
            monkeypatch, choice, lambda: generate_directions(seeds, SIZE, distribution)
        )
        for choice in ("compiled", "eager")
    }
    assert torch.equal(rows["compiled"], rows["eager"])
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for chunk in (1, 7, dim):
                for choice in ("compiled", "eager"):
                    cols = _with_engine(
                        monkeypatch,
                        choice,
                        lambda chunk=chunk, n=n_threads: _columns(
                            seeds, SIZE, distribution, chunk, n
                        ),
                    )
                    picked = rows["eager"][:, [0, 1, 63, 64, 1023, 1024, 2047, SIZE - 1]].t()
                    assert torch.equal(cols, picked), (choice, chunk, n_threads)
    finally:
        torch.set_num_threads(threads)


def _assert_products_match_dense(distribution, dim, monkeypatch, choices):
    """project, coordinates and expand on each engine against a dense float64 Phi."""
    g = torch.randn(SIZE, generator=torch.Generator().manual_seed(3))
    seeds = step_seeds(5, 0, 1, 0, dim)
    phi = generate_directions(seeds, SIZE, distribution).double() / SIZE**0.5
    coords = phi @ g.double()
    for choice in choices:

        def products():
            c, u = project(g, seeds, distribution, chunk_size=dim)
            c_only = project_coordinates(g, seeds, distribution, chunk_size=dim)
            return c, u, c_only, expand(c, seeds, SIZE, distribution, chunk_size=dim)

        c, u, c_only, u_from_c = _with_engine(monkeypatch, choice, products)
        # float32 sums of 3,001 terms: errors up to ~2e-6 on coordinates of size ~1-4.
        assert torch.allclose(c.double(), coords, rtol=1e-5, atol=1e-5), choice
        assert torch.allclose(u.double(), phi.t() @ coords, rtol=1e-5, atol=1e-5), choice
        assert torch.equal(c_only, c) and torch.equal(u_from_c, u), choice


@pytest.mark.parametrize("dim", [33, 300])  # 300: more rows than the kernels take at once
@pytest.mark.parametrize("distribution", DENSE)
def test_compiled_products_match_the_eager_ones(distribution, dim, monkeypatch):
    if native.library() is None:
        pytest.skip("no C compiler here: only the eager path exists")
    _assert_products_match_dense(distribution, dim, monkeypatch, ("compiled", "eager"))


NARROWER = {  # what -march=native gives a CPU without AVX-512, or without AVX at all
    "avx2": ("-mno-avx512f",),
    "sse": ("-mno-avx512f", "-mno-avx2", "-mno-avx", "-mno-fma"),
}


@pytest.mark.parametrize("unit", NARROWER)
def test_narrower_vector_units_draw_the_same_bits_and_products(unit, tmp_path, monkeypatch):
    """The kernels built for a CPU with narrower vectors (the sign kernels change their
    lane count with the width) draw the eager path's bits and match the dense products."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the flags of this test are x86's; this CPU is {platform.machine()}")
    if native.library() is None:
        pytest.skip("no C compiler here: only the eager path exists")
    lib = native.build_variant(tmp_path / f"engine-{unit}.so", NARROWER[unit])
    assert lib.rbd_lanes() == {"avx2": 8, "sse": 4}[unit]  # the width it was built for
    monkeypatch.setattr(native, "_LIBRARY", lib)
    monkeypatch.setattr(native, "_TRIED", True)
    seeds = step_seeds(11, 3, 0, 0, 20)
    for distribution in DENSE:
        rows = {
            choice: _with_engine(
                monkeypatch, choice, lambda d=distribution: generate_directions(seeds, SIZE, d)
            )
            for choice in ("compiled", "eager")
        }
        assert torch.equal(rows["compiled"], rows["eager"]), distribution
        _assert_products_match_dense(distribution, 300, monkeypatch, ("compiled",))


def _dispatched_ops(fn) -> int:
    """aten ops that one call dispatches (the profiler sees the calling thread's ops)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


@pytest.mark.parametrize("choice", ["compiled", "eager-device-chunks"])
def test_ops_per_step_do_not_grow_with_d(choice, monkeypatch):
    """One RBD step dispatches the same number of torch ops at d = 50, 250 and 1000: the
    compiled path draws every row inside its kernels, the eager path (as on a GPU, whose
    chunks hold every d that fits DEVICE_CHUNK_BYTES) one chunk in a fixed set of ops."""
    from rbd.optim import RBD

    if choice == "compiled" and native.library() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("RBD_ENGINE", "compiled" if choice == "compiled" else "eager")
    size = 5000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counts = []
        for dim in (50, 250, 1000):
            w = torch.nn.Parameter(torch.zeros(size))
            w.grad = torch.randn(size)
            opt = RBD([w], lr=0.1, dim=dim)
            if choice != "compiled":
                opt.chunk_size = default_chunk_size(size, "gaussian", device="cuda")
                assert opt.chunk_size >= 1000
            opt.step()  # warm-up
            counts.append(_dispatched_ops(opt.step))
    finally:
        torch.set_num_threads(threads)
    assert counts[0] == counts[1] == counts[2], counts


def test_no_compiler_falls_back_to_the_same_bits(tmp_path):
    """With no C compiler on PATH (and a fresh cache) the engine logs why and draws the
    same directions on the eager path; RBD_ENGINE=compiled makes it an error instead."""
    code = (
        "import torch; from rbd.bases import generate_directions, step_seeds;"
        "x = generate_directions(step_seeds(1, 0, 0, 0, 3), 500, 'gaussian');"
        "print(float(x.double().sum()))"
    )
    env = {"PATH": str(tmp_path), "RBD_CACHE_DIR": str(tmp_path / "cache"), "CC": "none"}
    fallback = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "no C compiler found" in fallback.stderr
    expected = float(generate_directions(step_seeds(1, 0, 0, 0, 3), 500, "gaussian").double().sum())
    assert float(fallback.stdout) == expected
    forced = subprocess.run(
        [sys.executable, "-c", code],
        env=env | {"RBD_ENGINE": "compiled"},
        capture_output=True,
        text=True,
    )
    assert forced.returncode != 0 and "RBD_ENGINE=compiled" in forced.stderr


def test_a_compiler_without_native_flags_builds_for_the_baseline(tmp_path):
    """A compiler that rejects every spelling of "native" (as some ARM compilers reject
    -march=native) still builds the kernels, for the baseline instruction set, says so in
    one log line, and they draw the same bits."""
    real = native._compiler()
    if real is None:
        pytest.skip("no C compiler here: only the eager path exists")
    fake = tmp_path / "cc"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in *=native) '
        "echo \"cc: error: unknown value 'native' in $a\" >&2; exit 1;; esac; done\n"
        f'exec "{real}" "$@"\n'
    )
    fake.chmod(0o755)
    code = (
        "from rbd.bases import generate_directions, step_seeds;"
        "x = generate_directions(step_seeds(1, 0, 0, 0, 3), 500, 'gaussian');"
        "print(float(x.double().sum()))"
    )
    env = os.environ | {
        "CC": str(fake),
        "RBD_CACHE_DIR": str(tmp_path / "cache"),
        "RBD_ENGINE": "compiled",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    warnings = [line for line in done.stderr.splitlines() if "rejected" in line]
    assert len(warnings) == 1 and "baseline instruction set" in warnings[0], done.stderr
    assert "unknown value 'native'" in warnings[0]
    expected = float(generate_directions(step_seeds(1, 0, 0, 0, 3), 500, "gaussian").double().sum())
    assert float(done.stdout) == expected


def test_unknown_engine_choice_is_an_error(monkeypatch):
    monkeypatch.setenv("RBD_ENGINE", "fast")
    with pytest.raises(ValueError, match="RBD_ENGINE"):
        native.library()


# SHA-256 (first 32 hex digits) of generate_directions(step_seeds(2020, 7, 0, 0, 5), size, d)
# as float32 bytes, recorded with bases version 2 before the kernels were rewritten for
# each vector width (issue 27): the directions every full-protocol run was trained with.
DIRECTION_DIGESTS = {
    (3001, "gaussian"): "d7220f8512659da628a7e01a89a7b0f2",
    (3001, "uniform"): "9e487190fe2a6f9de1cbdff870fae91b",
    (3001, "rademacher"): "8f6e0aba3158f6e608f5ccb0b7c9b3ba",
    (3001, "bernoulli-official"): "5f25a5e3027039d7284a850f719f2b52",
    (101770, "gaussian"): "ef6e5508716168747cb48696d1019471",
    (101770, "uniform"): "88e2bb8b82f9afab2bfeb28d5ef34302",
    (101770, "rademacher"): "c9db4b9aa35d900887544caf877bfd02",
    (101770, "bernoulli-official"): "253ce06f150b267231c95f0483743746",
}


@pytest.mark.parametrize("choice", ["compiled", "eager"])
def test_directions_are_the_recorded_bits(choice, monkeypatch):
    """Both paths draw, for fixed seeds, the very bits recorded before the kernels changed."""
    if choice == "compiled" and native.library() is None:
        pytest.skip("no C compiler here: only the eager path exists")
    seeds = step_seeds(2020, 7, 0, 0, 5)
    for (size, distribution), digest in DIRECTION_DIGESTS.items():
        rows = _with_engine(
            monkeypatch, choice, lambda s=size, d=distribution: generate_directions(seeds, s, d)
        )
        got = hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:32]
        assert got == digest, (size, distribution)
