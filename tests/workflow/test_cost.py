"""Wall-time requests follow what a run costs: d x D, epochs, the device, a scale."""

from __future__ import annotations

import re

import pytest

from rbd.spec import RunSpec
from rbd.spec.facts import MODEL_FACTS
from rbd.workflow.cost import OVERHEAD_MIN, runtime_minutes
from tests.helpers import _sbatch_line, _train_resources, snakemake


def spec(**changes):
    base = dict(method="rbd", model="fc", dataset="mnist", dim=250, distribution="gaussian",
                lr=1.0, epochs=100, seed=0)  # fmt: skip
    return RunSpec(**(base | changes))


def test_parameter_counts_are_the_models():
    from rbd.train.models import _BUILDERS, build_model, count_params

    assert set(MODEL_FACTS) == set(_BUILDERS)  # every model has its facts, and only those
    for model, facts in MODEL_FACTS.items():
        for shape, d in facts.num_params.items():
            size = tuple(int(v) for v in shape.split("x"))
            assert count_params(build_model(model, size)) == d, (model, shape)


def test_estimate_grows_with_d_epochs_and_shrinks_on_a_gpu():
    base = runtime_minutes(spec())
    assert runtime_minutes(spec(dim=2000)) > 5 * (base - 10)
    assert runtime_minutes(spec(epochs=10)) < base / 5
    assert runtime_minutes(spec(), device="cuda") - OVERHEAD_MIN < (base - OVERHEAD_MIN) / 10
    sgd = runtime_minutes(spec(method="sgd", dim=0, distribution="none"))
    assert sgd - OVERHEAD_MIN < (base - OVERHEAD_MIN) / 10
    assert runtime_minutes(spec(), attempt=2) == 2 * base
    # the measured cell: RBD on FC-MNIST, 100 epochs, one CPU thread here took 45-145 s
    # per epoch with the compiled kernels, depending on the machine's load (the engine
    # before them: 1.5-7 min); the estimate must cover the quiet case
    assert 100 * 0.75 < base < 100 * 3


def test_runtime_scale_multiplies_the_estimate():
    assert runtime_minutes(spec(), scale=2.0) - 10 == pytest.approx(
        2 * (runtime_minutes(spec()) - 10), abs=1
    )


def test_the_workflow_requests_the_estimate(tmp_path):
    args = ("-n", "--cores", "8", "--directory", tmp_path, "figures/fig_dims.pdf")
    jobs = _train_resources(snakemake(*args).stdout)
    by_dim = {}
    for run, res in jobs.items():
        if "/rbd/" in run:
            by_dim[int(re.search(r"/d(\d+)_", run)[1])] = int(res["runtime"])
    assert by_dim[2000] > by_dim[250] > by_dim[10]
    scaled = _train_resources(snakemake(*args, "--config", "runtime_scale=3").stdout)
    for run, res in scaled.items():
        assert int(res["runtime"]) - 10 == pytest.approx(
            3 * (int(jobs[run]["runtime"]) - 10), abs=2
        )


def test_small_jobs_are_local_rules_and_training_is_not():
    """Tables, figures, picking rates and downloads run where Snakemake runs; on SLURM
    only training jobs queue."""
    from tests.helpers import ROOT

    rules, local = set(), set()
    for path in (ROOT / "workflow/rules").glob("*.smk"):
        text = path.read_text()
        rules |= set(re.findall(r"^rule (\w+):", text, flags=re.M))
        for block in re.findall(r"^localrules:\n((?:    \w+,\n)+)", text, flags=re.M):
            local |= set(re.findall(r"\w+", block))
    assert "train" in rules and "train" not in local
    assert local == rules - {"train"}


def test_gpu_train_jobs_get_sbatch_flags_srun_accepts(tmp_path):
    args = ("-n", "--cores", "64", "--directory", tmp_path, "figures/fig_scaling.pdf")
    jobs = _train_resources(snakemake(*args, "--config", "device=cuda").stdout)
    lines = {}
    for run, res in jobs.items():
        workers = int(re.search(r"_w-(\d+)", run)[1])
        line = _sbatch_line(res, int(res["threads"]))
        lines[workers] = line
        assert "--ntasks-per-gpu" not in line, line  # plugin issues #342, #373
        assert f"--cpus-per-task={workers}" in line and "--nodes=1" in line, line
        assert f"--gpus={workers}" in line, line
    print("1-GPU job:", lines[1])
    print("4-GPU job:", lines[4])
    cpu = _train_resources(snakemake(*args).stdout)
    for res in cpu.values():
        line = _sbatch_line(res, int(res["threads"]))
        assert "--ntasks=1" in line and "--nodes=1" in line and "gpu" not in line, line
