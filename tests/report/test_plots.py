"""Figures from hand-made runs: every kind is a valid PDF; the best-rate pick and its YAML."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from matplotlib.figure import Figure

from rbd.report.kinds import KINDS
from rbd.report.plots import plot
from rbd.report.rates import best_learning_rates, lr_snippet
from rbd.report.tables import experiment_table, render, table_figure
from rbd.workflow.config import expand_experiment, validate_config
from tests.helpers import ROOT, _timed, is_pdf, make_run, run_rbd

SCHEMA = ROOT / "config/schemas/config.schema.yaml"


def _bases_runs(root):
    paths = []
    for dist, seconds in (("gaussian", 5.0), ("srht", 0.5), ("fastfood", 0.6)):
        for dim in (50, 100):
            for seed in range(2):
                paths.append(
                    make_run(root, "rbd", seed, 70.0 + seed + dim / 10, dim=dim,
                             distribution=dist, metrics=_timed([seconds * dim / 100] * 2))
                )  # fmt: skip
    paths.append(make_run(root, "rbd", 2, [11.0], dim=100, distribution="srht",
                          status="diverged"))  # fmt: skip
    paths.append(make_run(root, "sgd", 0, 90.0, dim=0, distribution="none",
                          metrics=_timed([0.2, 0.2])))  # fmt: skip
    return paths


def _intrinsic_runs(root):
    li = {"update_rule": "adam", "l2": 1e-4}
    paths = [make_run(root, "sgd", 0, 98.0, dim=0, distribution="none", settings=li)]
    for method, accs in (("fpd", (60.0, 85.0, 92.0)), ("rbd", (80.0, 93.0, 95.0))):
        for dim, acc in zip((100, 500, 1000), accs, strict=True):
            paths.append(make_run(root, method, 0, acc, dim=dim, distribution="fastfood",
                                  settings=li))  # fmt: skip
    paths.append(make_run(root, "rbd", 1, [11.0], dim=100, distribution="fastfood",
                          status="diverged", settings=li))  # fmt: skip
    return paths


# Kinds whose hand-made runs have a builder of their own.
OWN_RUNS = {"bases": _bases_runs, "intrinsic_dim": _intrinsic_runs}


def _figure_runs(root, kind):
    """A small hand-made experiment of each figure kind, with one diverged run."""
    if kind in OWN_RUNS:
        return OWN_RUNS[kind](root)
    paths = []
    if kind == "curves":
        for method, base in (("sgd", 80.0), ("rbd", 60.0), ("fpd", 50.0), ("nes", 20.0)):
            dim = 0 if method == "sgd" else 50
            for seed in range(2):
                paths.append(
                    make_run(root, method, seed, [base, base + 5 + seed, base + 8], dim=dim)
                )
        paths.append(make_run(root, "nes", 2, [15.0], dim=50, status="diverged"))
    elif kind == "dims":
        for dim in (10, 50, 200):
            for seed in range(2):
                paths.append(
                    make_run(root, "rbd", seed, 40.0 + dim / 10, dim=dim, grad_corr=0.001 * dim)
                )
                paths.append(
                    make_run(root, "fpd", seed, 30.0 + dim / 20, dim=dim, grad_corr=0.001 * dim)
                )
        paths.append(make_run(root, "sgd", 0, 90.0, dim=0))
        paths.append(make_run(root, "rbd", 2, [12.0], dim=200, status="diverged"))
    elif kind == "switch":
        paths.append(make_run(root, "sgd", 0, [80.0, 85.0, 87.0], dim=0))
        for switch in ("none", "sgd_first:1", "sgd_last:2"):
            for seed in range(2):
                paths.append(make_run(root, "rbd", seed, [50.0, 60.0 + seed, 70.0], switch=switch))
    elif kind == "lr_sweep":
        for k in range(-3, 2):
            for method in ("sgd", "rbd"):
                paths.append(make_run(root, method, 0, 60.0 - k * k, lr=2.0**k))
        paths.append(make_run(root, "rbd", 0, [10.0], lr=4.0, status="diverged"))
    elif kind == "scaling":
        for workers in (1, 2, 4):
            for bases in ("worker", "split"):
                step = 0.01 * (workers if bases == "worker" else 1)
                timings = {
                    "workers": [workers] * 2,
                    "step_s": [step] * 2,
                    "compute_s": [step / 2] * 2,
                    "regen_s": [step / 3] * 2,
                    "comm_s": [step / 6] * 2,
                    "bytes_per_step": [workers * 400] * 2,
                    "sgd_bytes_per_step": [407_080] * 2,
                }
                paths.append(
                    make_run(
                        root,
                        "rbd",
                        0,
                        [60.0, 70.0 + workers],
                        dim=100,
                        metrics=timings,
                        settings={"workers": workers, "sharing": bases},
                    )  # fmt: skip
                )
    return paths


# Kinds drawn by a figure drawer, and kinds whose figure is their table drawn as a page.
FIGURE_KINDS = [name for name, kind in KINDS.items() if kind.figure != "table"]
TABLE_KINDS = [name for name, kind in KINDS.items() if kind.figure == "table"]


@pytest.mark.parametrize("kind", FIGURE_KINDS)
def test_every_figure_kind_is_a_valid_pdf(tmp_path, kind):
    runs = tmp_path / "runs"
    runs.mkdir()
    data = experiment_table(_figure_runs(runs, kind), f"fig_{kind}", kind)
    # Through the CSV, as the workflow does.
    csv = tmp_path / "tidy.csv"
    data.to_csv(csv, index=False)
    proc = run_rbd("plot", "--experiment", "x", "--kind", kind, "--csv", csv,
                   "--pdf", tmp_path / "x.pdf", "--description", "a test figure")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert is_pdf(tmp_path / "x.pdf")


@pytest.mark.parametrize("kind", TABLE_KINDS)
def test_every_table_kind_is_a_valid_pdf(tmp_path, kind):
    paths = [make_run(tmp_path, "sgd", s, 90.0 + s, dim=0, distribution="none") for s in range(2)]
    for f in (10, 20):
        paths += [
            make_run(tmp_path, "rbd", s, 70.0 + s, compartments=f"compression:{f}")
            for s in range(2)
        ]
    table = experiment_table(paths, "t", kind)
    outputs = {suffix: tmp_path / f"t.{suffix}" for suffix in ("pdf", "md", "tex")}
    render(table, "t", kind=kind, description="a test table", **outputs)
    assert is_pdf(outputs["pdf"])
    # The workflow draws the page with `rbd plot`, as every experiment's figure.
    csv = tmp_path / "t.csv"
    table.to_csv(csv, index=False)
    proc = run_rbd("plot", "--experiment", "t", "--kind", kind, "--csv", csv,
                   "--pdf", tmp_path / "page.pdf", "--description", "a test table")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert is_pdf(tmp_path / "page.pdf")
    assert outputs["md"].read_text().count("\n|") >= 2
    assert outputs["tex"].read_text().count("\\\\") >= 2


@pytest.mark.parametrize("kind", FIGURE_KINDS)
def test_every_figure_kind_is_returned_not_saved_and_not_kept_by_pyplot(tmp_path, kind):
    import matplotlib.pyplot as plt

    runs = tmp_path / "runs"
    runs.mkdir()
    data = experiment_table(_figure_runs(runs, kind), f"fig_{kind}", kind)
    figures_before = plt.get_fignums()
    fig = plot(kind, data, "a test figure")
    assert isinstance(fig, Figure) and any(ax.has_data() for ax in fig.axes)
    # Not registered with pyplot: a notebook shows it once, and nothing leaks.
    assert plt.get_fignums() == figures_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_table_figure_is_returned_with_the_table_drawn(tmp_path):
    paths = [make_run(tmp_path, m, 0, 80.0, dim=0 if m == "sgd" else 50) for m in ("sgd", "rbd")]
    fig = table_figure(experiment_table(paths, "t", "method_table"), "t")
    assert isinstance(fig, Figure)
    cells = fig.axes[0].tables[0].get_celld()
    header = [cells[0, c].get_text().get_text() for c in range(4)]
    assert header == ["model-data", "D", "RBD", "SGD"]


def test_drawing_neither_switches_the_backend_nor_restyles_the_callers_plots(tmp_path):
    """In a fresh interpreter on the svg backend, as a notebook would have its own."""
    runs = tmp_path / "runs"
    runs.mkdir()
    csv = tmp_path / "curves.csv"
    experiment_table(_figure_runs(runs, "curves"), "c", "curves").to_csv(csv, index=False)
    script = """
import sys
import matplotlib
matplotlib.use("svg")
rc_before = dict(matplotlib.rcParams)
import pandas as pd
import rbd.report.plots, rbd.report.tables
assert matplotlib.get_backend() == "svg", "import: " + matplotlib.get_backend()
fig = rbd.report.plots.plot("curves", pd.read_csv(sys.argv[1]), "t")
assert type(fig).__name__ == "Figure", type(fig)
assert matplotlib.get_backend() == "svg", "drawing: " + matplotlib.get_backend()
changed = sorted(k for k, v in matplotlib.rcParams.items() if rc_before.get(k) != v)
assert not changed, changed
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(csv)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_best_rate_is_the_highest_mean_and_skips_diverged_rates(tmp_path):
    accs = {  # lr -> validation accuracy per seed
        0.25: [70.0, 72.0],
        0.5: [75.0, 74.0],  # the best mean, 74.5
        1.0: [90.0, None],  # one seed diverged: not eligible despite 90 %
        2.0: [74.5, 74.5],  # ties with 0.5: the smaller rate wins
    }
    paths = []
    for lr, values in accs.items():
        for seed, acc in enumerate(values):
            status = "diverged" if acc is None else "done"
            paths.append(make_run(tmp_path, "rbd", seed, [acc or 10.0], lr=lr, status=status))
    paths.append(make_run(tmp_path, "sgd", 0, 80.0, lr=0.125, dim=0, model="cnn"))
    best = best_learning_rates(experiment_table(paths, "fig_lr", "lr_sweep"))
    assert best == {"rbd": {"fc-mnist": 0.5}, "sgd": {"cnn-mnist": 0.125}}


def test_best_rates_snippet_is_a_config_that_validates(tmp_path):
    snippet = lr_snippet({"sgd": {"fc-mnist5k": 2**-3}, "rbd": {"fc-mnist5k": 0.3}}, "a note")
    parsed = yaml.safe_load(snippet)
    assert parsed == {"learning_rates": {"sgd": {"fc-mnist5k": "2^-3"}, "rbd": {"fc-mnist5k": 0.3}}}
    config = copy.deepcopy(yaml.safe_load((ROOT / "config/quick.yaml").read_text()))
    for method, rates in parsed["learning_rates"].items():
        config["learning_rates"][method] |= rates
    validate_config(config, SCHEMA)
    rbd = [r for r in expand_experiment(config, "table1") if r.method == "rbd" and r.model == "fc"]
    assert {r.lr for r in rbd} == {0.3}


def test_pick_lr_cli_writes_the_snippet(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    csv = tmp_path / "sweep.csv"
    experiment_table(_figure_runs(runs, "lr_sweep"), "fig_lr", "lr_sweep").to_csv(csv, index=False)
    out = tmp_path / "best.yaml"
    proc = run_rbd("pick-lr", "--csv", csv, "--out", out)
    assert proc.returncode == 0, proc.stderr
    # 60 - k^2 peaks at k = 0 for both methods; rbd at 2^2 diverged.
    assert yaml.safe_load(out.read_text()) == {
        "learning_rates": {"rbd": {"fc-mnist": "2^0"}, "sgd": {"fc-mnist": "2^0"}}
    }
