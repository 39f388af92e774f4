"""benchmarks/gpu_check.py, the GPU check: its CPU mode runs every section and writes the
report (so that the check cannot rot between GPU runs), its comparisons fail when the
device's values differ, and without CUDA its CUDA mode stops in one line."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from rbd.bases import DENSE, DISTRIBUTIONS
from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)
device_check = gpu_check.device_check

TINY = ["--device", "cpu", "--sizes", "97,3001", "--rows", "24", "--product-dim", "12",
        "--models", "fc", "--dims", "10", "--steps", "1", "--warmup", "1"]  # fmt: skip
TITLES = {
    "tests": "## 1. Tests that take a device",
    "bits": "## 2. Directions and products: CPU against the device",
    "timing": "## 3. Step times",
    "workflow": "## 4. A slice of the paper preset through Snakemake",
}


def test_cpu_mode_runs_every_section_and_writes_the_report(tmp_path):
    one_test = "tests/integration/test_on_device.py::test_dense_directions_are_the_cpu_bits"
    proc = subprocess.run(
        [sys.executable, SCRIPT, *TINY, "--tests", one_test, "--out", tmp_path],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / gpu_check.REPORT).read_text()
    report = gpu_check.read_report(tmp_path / gpu_check.REPORT)
    assert text.startswith("# GPU check: PASS") and report["outcome"] == "pass"
    for name, title in TITLES.items():
        assert f"{title}: PASS" in text and report["sections"][name]["outcome"] == "pass"
    host = report["host"]
    assert host["vector_width"] in {"AVX-512", "AVX2", "AVX", "SSE", "SVE", "NEON"}
    assert host["cpu_model"] and host["torch"] == torch.__version__
    assert report["device"]["device"] == "cpu" and f"vector width {host['vector_width']}" in text

    tests = report["sections"]["tests"]
    assert tests["passed"] == 3 * len(DENSE) and tests["failures"] == tests["errors"] == 0

    rows = report["sections"]["bits"]["rows"]
    found = {(r["what"], r["distribution"], r["size"]) for r in rows}
    assert found == {
        (what, dist, size)
        for what in ("directions", "coords", "update", "expand")
        for dist in DISTRIBUTIONS
        for size in (97, 3001)
    }
    for r in rows:
        assert r["ok"] and "eager" in r["candidate"]
        dense_rows = r["what"] == "directions" and r["distribution"] in DENSE
        assert (r["rule"] == "bits") == (dense_rows or r["what"] == "expand")
        if r["rule"] == "bits":
            assert r["mismatched"] == 0

    timed = report["sections"]["timing"]["rows"]
    assert {r["method"] for r in timed} == {"sgd", "rbd", "fpd", "nes"}
    assert {r["distribution"] for r in timed if r["method"] == "rbd"} == set(DISTRIBUTIONS)
    assert all(r["step_ms"] > 0 and r["train_step_ms"] >= r["step_ms"] for r in timed)

    flow = report["sections"]["workflow"]
    assert {(r["method"], r["status"], r["device"]) for r in flow["rows"]} == {
        ("rbd", "done", "cpu"),
        ("sgd", "done", "cpu"),
    }
    assert flow["runs_at_once"] >= 1 and (tmp_path / "workflow/figures/table1.md").is_file()


def _device_side() -> bool:
    """In the CPU mode the device's values are drawn by the eager path."""
    return os.environ.get("RBD_ENGINE") == "eager"


def test_comparisons_fail_when_the_device_differs(tmp_path, monkeypatch, capsys):
    """One bit of one Rademacher value, 1e-3 on one SRHT value, and a Fastfood update 1e-3
    too large, on the device side only: each is caught, and nothing else is."""
    draw, product = device_check.generate_directions, device_check.project

    def draw_wrong(seeds, size, distribution, **kwargs):
        rows = draw(seeds, size, distribution, **kwargs)
        if _device_side() and distribution == "rademacher":
            rows.view(torch.int32)[0, 5] ^= 1
        if _device_side() and distribution == "srht":
            rows[1, 3] += 1e-3
        return rows

    def project_wrong(grad, seeds, distribution, **kwargs):
        coords, update = product(grad, seeds, distribution, **kwargs)
        if _device_side() and distribution == "fastfood":
            update = update * (1 + 1e-3)
        return coords, update

    monkeypatch.setattr(device_check, "generate_directions", draw_wrong)
    monkeypatch.setattr(device_check, "project", project_wrong)
    assert gpu_check.main([*TINY, "--sections", "bits", "--out", str(tmp_path)]) == 1
    report = gpu_check.read_report(tmp_path / gpu_check.REPORT)
    assert report["outcome"] == "fail" and report["sections"]["bits"]["outcome"] == "fail"
    assert report["sections"]["workflow"]["outcome"] == "skipped"
    rows = report["sections"]["bits"]["rows"]
    wrong = {(r["what"], r["distribution"]) for r in rows if not r["ok"]}
    # expand rebuilds the true update, which the nudged one no longer equals
    assert wrong == {("directions", "rademacher"), ("directions", "srht"),
                     ("update", "fastfood"), ("expand", "fastfood")}  # fmt: skip
    flipped = [r for r in rows if (r["what"], r["distribution"]) == ("directions", "rademacher")]
    assert [r["mismatched"] for r in flipped] == [1, 1]
    assert f"{TITLES['bits']}: FAIL" in (tmp_path / gpu_check.REPORT).read_text()


def test_mismatched_values_count_bits_not_equality():
    a = torch.tensor([0.0, 1.0, float("nan"), 2.0])
    b = torch.tensor([-0.0, 1.0, float("nan"), 2.0 + 2**-22])
    assert device_check.mismatched_values(a, a.clone()) == 0
    assert device_check.mismatched_values(a, b) == 2  # -0.0 and one ulp; NaN is the same NaN
    with pytest.raises(ValueError, match="cannot compare"):
        device_check.mismatched_values(a, a[:3])


def test_vector_width_from_cpu_flags():
    width = device_check.vector_width
    assert width({"avx512f", "avx2", "avx", "sse2"}, "x86_64") == "AVX-512"
    assert width({"avx2", "avx", "sse2"}, "x86_64") == "AVX2"
    assert width({"fp", "asimd"}, "aarch64") == "NEON"
    assert width(set(), "x86_64") == "none"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_mode_without_cuda_stops_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--device", "cuda", "--out", str(tmp_path / "out")])
    message = str(stop.value.code)
    assert "no CUDA device is present" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # stopped before anything ran


def test_the_paper_slice_is_sixteen_runs_with_the_paper_settings(tmp_path):
    """What the GPU runs through Snakemake, planned here (so that a renamed experiment or
    key of the paper preset breaks this test, not the one GPU run)."""
    import yaml

    from rbd.workflow.config import experiment_runs, learning_rate

    config = gpu_check.slice_config("paper", "cuda", "mnist5k", 1, None)
    specs = {spec for runs in experiment_runs(config).values() for spec in runs}
    assert len(specs) == 16 and config["device"] == "cuda"
    assert {(s.model, s.dataset, s.epochs, s.seed, s.augment) for s in specs} == {
        (model, "mnist5k", 1, 0, True) for model in ("fc", "cnn", "resnet8")
    }
    assert {s.method for s in specs} == {"sgd", "rbd", "fpd", "nes"}
    assert {s.distribution for s in specs if s.method == "rbd"} == set(DISTRIBUTIONS)
    assert {s.compartments for s in specs if s.model == "resnet8"} == {"none", "compression:10"}
    paper = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for s in specs:  # the paper's MNIST rates (ResNet-8: its CIFAR-10 ones)
        source = "cifar10" if s.model == "resnet8" else "mnist"
        assert s.lr == learning_rate(paper, s.method, s.model, source, batch_size=32)
    real = gpu_check.slice_config("paper", "cuda", "mnist", 1, tmp_path)
    assert real["data_source"] == {"mnist": str(tmp_path.resolve())}


def test_the_wheels_for_the_gpu_machine_are_what_it_lacks():
    """gpu_wheels.py --list: the workflow's and mnist5k's packages at this venv's versions,
    with what they need, less what the GPU image has (PyTorch above all: gigabytes)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_wheels.py"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    specs = dict(line.split("==") for line in done.stdout.split())
    for name in ("snakemake", "snakemake-executor-plugin-slurm", "jsonschema", "mlxtend"):
        assert specs[name] == importlib.metadata.version(name)
    assert "referencing" in specs  # jsonschema's own need, pulled in by the closure
    assert not {"torch", "numpy", "pandas", "scipy", "matplotlib"} & specs.keys()
