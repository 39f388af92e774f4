"""The kernels built for aarch64 (as on Graviton, Grace or Ampere servers and Apple
silicon under Linux) draw the same directions and products, run under qemu-user.

Needs Debian's gcc-aarch64-linux-gnu (with libc6-dev-arm64-cross) and qemu-user;
`make test-arm` installs them (as root) and runs this file. Without them it skips.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rbd.bases import (
    DENSE,
    KERNEL_CODE,
    generate_directions,
    native,
    normal_quantile_table,
    step_seeds,
)

DRIVER = Path(__file__).with_name("native") / "engine_driver.c"
SIZE = 3001  # a tail beyond the last 64-value word, two column tiles
DIM = 300  # more rows than one batch of either kernel
# Baseline ARMv8 (NEON only), and a Neoverse V1 (Graviton3: SVE, which the compiler's
# own vectoriser may use) run on qemu's "max" CPU.
TARGETS = {"armv8-a": ("-march=armv8-a",), "neoverse-v1": ("-mcpu=neoverse-v1",)}


def _tools():
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not (cc and qemu):
        pytest.skip(
            "no aarch64 cross compiler or qemu-aarch64 here: install Debian's "
            "gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (make test-arm)"
        )
    return cc, qemu


def _run(exe: Path, qemu: str, distribution: str, seeds, g, tmp_path: Path):
    scale = np.float32(1.0 / SIZE**0.5)
    head = np.array([len(seeds), SIZE, KERNEL_CODE[distribution]], dtype=np.int64)
    data = b"".join(
        [
            head.tobytes(),
            np.array(seeds, dtype=np.int64).tobytes(),
            normal_quantile_table().numpy().tobytes(),
            g.numpy().tobytes(),
            scale.tobytes(),
        ]
    )
    (tmp_path / "in").write_bytes(data)
    subprocess.run(
        [qemu, "-cpu", "max", str(exe), str(tmp_path / "in"), str(tmp_path / "out")],
        check=True,
        timeout=300,
    )
    out = np.frombuffer((tmp_path / "out").read_bytes(), dtype=np.float32)
    width = 64 * -(-SIZE // 64)
    parts, at = [], 0
    for n in (DIM * width, DIM, SIZE, DIM, SIZE):
        parts.append(torch.from_numpy(out[at : at + n].copy()))
        at += n
    assert at == len(out)
    rows, coords, update, coords_only, expanded = parts
    return rows.view(DIM, width)[:, :SIZE], coords, update, coords_only, expanded


@pytest.mark.parametrize("target", TARGETS)
def test_aarch64_build_draws_the_same_bits_under_qemu(target, tmp_path, monkeypatch):
    cc, qemu = _tools()
    exe = tmp_path / "engine_driver"
    flags = [f for f in native.FLAGS if f not in ("-shared", "-fPIC")]
    subprocess.run(
        [cc, *flags, *TARGETS[target], "-static", str(DRIVER), str(native.SOURCE)]
        + ["-o", str(exe), "-lm"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    monkeypatch.setenv("RBD_ENGINE", "eager")  # the reference: torch ops on this CPU
    seeds = step_seeds(11, 3, 0, 0, DIM)
    g = torch.randn(SIZE, generator=torch.Generator().manual_seed(3))
    for distribution in DENSE:
        rows, coords, update, coords_only, expanded = _run(
            exe, qemu, distribution, seeds, g, tmp_path
        )
        reference = generate_directions(seeds, SIZE, distribution)
        assert torch.equal(rows, reference), distribution
        phi = reference.double() / SIZE**0.5
        want = phi @ g.double()
        # float32 sums of 3,001 terms, as in test_engine's dense comparison.
        assert torch.allclose(coords.double(), want, rtol=1e-5, atol=1e-5), distribution
        assert torch.allclose(update.double(), phi.t() @ want, rtol=1e-5, atol=1e-5)
        assert torch.equal(coords_only, coords) and torch.equal(expanded, update), distribution


def test_arm_compilers_are_asked_for_their_own_spelling_of_native():
    """-mcpu=native first on ARM (GCC and clang there take it; some reject -march=native),
    then -march=native, then the baseline; x86 asks for -march=native, then the baseline."""
    assert native.target_flags("aarch64") == (("-mcpu=native",), ("-march=native",), ())
    assert native.target_flags("arm64") == native.target_flags("aarch64")
    assert native.target_flags("x86_64") == (("-march=native",), ())
