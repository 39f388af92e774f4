"""Aggregation on hand-made run directories, checked against numbers computed here."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from rbd.report.tables import (
    aggregate,
    experiment_table,
    load_curves,
    load_runs,
    measured_step_seconds,
    render,
    wide_table,
)
from tests.helpers import ROOT, _timed, is_pdf, make_run


@pytest.fixture
def runs(tmp_path):
    paths = [make_run(tmp_path, "sgd", s, acc) for s, acc in enumerate([98.0, 97.0, 99.0])]
    paths += [make_run(tmp_path, "rbd", s, acc) for s, acc in enumerate([90.0, 94.0])]
    paths.append(make_run(tmp_path, "rbd", 2, [11.0], status="diverged"))
    paths += [make_run(tmp_path, "nes", s, [20.0], status="diverged") for s in range(2)]
    return load_runs(paths)


def test_means_stds_and_fractions(runs):
    table = aggregate(runs, "table1").set_index("method")
    assert table.loc["sgd", "val_acc_mean"] == pytest.approx(98.0)
    assert table.loc["sgd", "val_acc_std"] == pytest.approx(np.std([98, 97, 99], ddof=1))
    # The diverged seed is counted, not averaged in.
    assert table.loc["rbd", "n_seeds"] == 3 and table.loc["rbd", "n_diverged"] == 1
    assert table.loc["rbd", "val_acc_mean"] == pytest.approx(92.0)
    assert table.loc["rbd", "val_acc_std"] == pytest.approx(math.sqrt(((90 - 92) ** 2 + 2**2) / 1))
    assert table.loc["rbd", "frac_sgd"] == pytest.approx(92.0 / 98.0)
    assert table.loc["nes", "n_diverged"] == 2 and np.isnan(table.loc["nes", "val_acc_mean"])
    # The paper's Table 1 value for FC-MNIST at d = 250.
    assert table.loc["rbd", "paper_val_acc"] == pytest.approx(93.893)
    assert table.loc["sgd", "paper_val_acc"] == pytest.approx(98.27)
    assert list(table.index) == ["nes", "rbd", "sgd"]


def test_rendered_table_marks_diverged_cells_and_is_a_pdf(runs, tmp_path):
    table = aggregate(runs, "table1")
    pdf, md, tex = tmp_path / "t.pdf", tmp_path / "t.md", tmp_path / "t.tex"
    render(table, "table1", pdf=pdf, md=md, tex=tex)
    assert is_pdf(pdf)
    text = md.read_text()
    assert "diverged (2/2)" in text and "[1/3 diverged]" in text
    assert "92.00 ± 2.83 (0.94)" in text and "paper 93.893" in text
    assert "\\begin{tabular}" in tex.read_text()


def test_paper_values_only_where_the_paper_has_them(tmp_path):
    paths = [
        make_run(tmp_path, "rbd", 0, 90.0, distribution="uniform"),
        make_run(tmp_path, "rbd", 0, 90.0, dim=100),
        make_run(tmp_path, "rbd", 0, 90.0, dataset="mnist5k"),
    ]
    table = aggregate(load_runs(paths), "t")
    assert table["paper_val_acc"].isna().all()


def test_distribution_table_has_one_column_per_distribution(tmp_path):
    accs = {"gaussian": [80.0, 82.0], "uniform": [70.0, 74.0], "rademacher": [79.0, 81.0]}
    paths = [
        make_run(tmp_path, "rbd", s, acc, distribution=d)
        for d, values in accs.items()
        for s, acc in enumerate(values)
    ]
    paths += [make_run(tmp_path, "sgd", s, 90.0, dim=0, distribution="none") for s in range(2)]
    wide = wide_table(aggregate(load_runs(paths), "table2"), "distribution_table")
    assert list(wide.columns) == ["model-data", "D", "Gaussian", "Uniform", "Rademacher", "SGD"]
    row = wide.iloc[0]
    assert row["Uniform"] == f"72.00 ± {np.std([70, 74], ddof=1):.2f} ({72 / 90:.2f})"
    assert row["Gaussian"].startswith("81.00 ± 1.41 (0.90)") and "paper 93.893" in row["Gaussian"]
    assert row["SGD"].startswith("90.00")


def test_compression_table_rows_are_factors_with_coordinates_and_correlation(tmp_path):
    paths = []
    for f, coords, accs in [(10, 7833, [60.0, 62.0]), (75, 1050, [40.0, 44.0])]:
        for method, shift in (("rbd", 0.0), ("fpd", -10.0)):
            paths += [
                make_run(
                    tmp_path,
                    method,
                    s,
                    acc + shift,
                    model="resnet8",
                    dataset="cifar10",
                    compartments=f"compression:{f}",
                    grad_corr=0.1,
                    # the authors' per-tensor mean, which Table 3 shows
                    metrics={"grad_corr_tensors_mean": [0.3, 0.2]},
                    num_params=78_330,
                    num_coordinates=coords,
                )  # fmt: skip
                for s, acc in enumerate(accs)
            ]
    paths.append(
        make_run(
            tmp_path,
            "sgd",
            0,
            80.0,
            model="resnet8",
            dataset="cifar10",
            dim=0,
            distribution="none",
            num_params=78_330,
        )  # fmt: skip
    )
    table = aggregate(load_runs(paths), "table3")
    wide = wide_table(table, "compression_table")
    assert list(wide["compression"]) == ["10x", "75x"]
    assert list(wide["coordinates"]) == ["7,833", "1,050"]
    assert wide.loc[0, "RBD"].startswith(f"61.00 ± 1.41 ({61 / 80:.2f})\ncorr 0.200")
    assert table.loc[table["method"] != "sgd", "grad_corr_mean"].eq(0.1).all()
    assert "paper (0.84 of SGD)" in wide.loc[0, "RBD"]
    assert wide.loc[1, "FPD"].startswith(f"32.00 ± 2.83 ({32 / 80:.2f})")
    assert (wide["SGD"] == "80.00").all()


def test_curves_keep_every_epoch_and_diverged_runs(tmp_path):
    paths = [
        make_run(tmp_path, "rbd", 0, [30.0, 50.0, 60.0]),
        make_run(tmp_path, "rbd", 1, [20.0], status="diverged"),
    ]
    curves = load_curves(paths)
    assert len(curves) == 4
    assert list(curves.loc[curves["seed"] == 0, "val_acc"]) == [30.0, 50.0, 60.0]
    assert list(curves.loc[curves["seed"] == 1, "status"]) == ["diverged"]
    tidy = experiment_table(paths, "fig_curves", "curves")
    assert (tidy["experiment"] == "fig_curves").all() and len(tidy) == 4
    per_run = experiment_table(paths, "fig_dims", "dims")
    assert len(per_run) == 2 and np.isnan(per_run.loc[1, "val_acc"])


def test_measured_step_seconds_is_the_median_epoch_time_over_its_steps():
    metrics = pd.DataFrame(_timed([2.0, 1.0, 1.5]))
    # 4,000 images in batches of 32: 125 steps; the median epoch took 1.5 s.
    assert measured_step_seconds(metrics, 32) == pytest.approx(1.5 / 125)
    # 4,001 images: the last, short batch is a step too.
    assert measured_step_seconds(pd.DataFrame(_timed([1.26], 4001)), 32) == pytest.approx(
        1.26 / 126
    )
    # Distributed runs log their mean step time themselves.
    metrics["step_s"] = [0.5, 0.25, 0.75]
    assert measured_step_seconds(metrics, 32) == pytest.approx(0.5)
    assert np.isnan(measured_step_seconds(pd.DataFrame({"val_acc": [1.0]}), 32))


def test_bases_table_has_accuracy_and_step_time_against_sgd(tmp_path):
    # (distribution, dim) -> accuracies of 3 seeds and seconds per epoch (125 steps).
    cases = {
        ("gaussian", 50): ([80.0, 82.0, 84.0], 5.0),
        ("gaussian", 100): ([85.0, 86.0, 87.0], 10.0),
        ("srht", 100): ([84.0, 85.0, 89.0], 0.5),
    }
    paths = [
        make_run(
            tmp_path,
            "rbd",
            s,
            acc,
            dim=d,
            distribution=dist,
            dataset="mnist5k",
            metrics=_timed([t, t]),
        )  # fmt: skip
        for (dist, d), (accs, t) in cases.items()
        for s, acc in enumerate(accs)
    ]
    paths += [
        make_run(
            tmp_path,
            "sgd",
            s,
            90.0 + s,
            dim=0,
            distribution="none",
            dataset="mnist5k",
            metrics=_timed([0.25, 0.25]),
        )  # fmt: skip
        for s in range(2)
    ]
    table = experiment_table(paths, "fig_bases", "bases").set_index(["distribution", "dim"])
    sgd_step, sgd_acc = 0.25 / 125, 90.5
    srht = table.loc[("srht", 100)]
    assert srht["n_seeds"] == 3 and srht["val_acc_mean"] == pytest.approx(86.0)
    assert srht["val_acc_std"] == pytest.approx(np.std([84, 85, 89], ddof=1))
    assert srht["step_s_mean"] == pytest.approx(0.5 / 125)
    assert srht["step_ratio_sgd"] == pytest.approx((0.5 / 125) / sgd_step)
    assert srht["frac_sgd"] == pytest.approx(86.0 / sgd_acc)
    assert table.loc[("gaussian", 100), "step_ratio_sgd"] == pytest.approx(40.0)
    assert table.loc[("none", 0), "step_ratio_sgd"] == pytest.approx(1.0)

    wide = wide_table(experiment_table(paths, "fig_bases", "bases"), "bases")
    assert list(wide.columns) == ["model-data", "D", "d", "Gaussian", "SRHT", "SGD"]
    assert list(wide["d"]) == [50, 100]
    assert wide.loc[1, "SRHT"] == (
        f"86.00 ± {np.std([84, 85, 89], ddof=1):.2f} ({86 / sgd_acc:.2f})\n"
        f"{1000 * 0.5 / 125:.1f} ms/step (2.0x SGD)"
    )
    assert wide.loc[0, "SRHT"] == "-"
    assert (wide["SGD"] == f"90.50 ± 0.71\n{1000 * sgd_step:.1f} ms/step").all()
    outputs = {suffix: tmp_path / f"b.{suffix}" for suffix in ("md", "tex")}
    render(experiment_table(paths, "fig_bases", "bases"), "fig_bases", kind="bases", **outputs)
    assert "| MNIST5k" not in outputs["md"].read_text()
    assert "| FC-MNIST5k | 101,770 | 100 |" in outputs["md"].read_text()


def test_scaling_table_keeps_timings_per_epoch_and_the_distributed_settings(tmp_path):
    from rbd.report.plots import scaling_summary

    paths = []
    for workers, bases, step in ((1, "worker", 0.010), (2, "worker", 0.030), (2, "split", 0.012)):
        timings = {
            "workers": [workers] * 3,
            "step_s": [step, 2 * step, step],
            "compute_s": [step / 2] * 3,
            "regen_s": [step / 4] * 3,
            "comm_s": [step / 4] * 3,
            "bytes_per_step": [workers * (100 if bases == "worker" else 50) * 4] * 3,
            "sgd_bytes_per_step": [101_770 * 4] * 3,
        }
        paths.append(
            make_run(
                tmp_path,
                "rbd",
                0,
                [50.0, 60.0, 70.0 + workers],
                dim=100,
                metrics=timings,
                settings={"workers": workers, "sharing": bases},
            )  # fmt: skip
        )
    tidy = experiment_table(paths, "fig_scaling", "scaling")
    assert len(tidy) == 9 and {"epoch", "step_s", "comm_s", "bytes_per_step"} <= set(tidy)
    assert sorted(set(zip(tidy["workers"], tidy["sharing"], strict=True))) == [
        (1, "worker"), (2, "split"), (2, "worker")
    ]  # fmt: skip
    summary = scaling_summary(tidy).set_index(["sharing", "workers"])
    # Median over the epochs of each run: the slow middle epoch is left out.
    assert summary.loc[("worker", 2), "step_s"] == pytest.approx(0.030)
    assert summary.loc[("split", 2), "bytes_per_step"] == 400
    assert summary.loc[("worker", 2), "bytes_per_step"] == 800
    assert summary.loc[("worker", 1), "val_acc"] == 71.0


VERIFICATION_CSV = ROOT / "docs" / "verification" / "full_protocol.csv"


def test_table_commands_start_without_torch(tmp_path):
    """`rbd aggregate` and `rbd render` (17 jobs of the quick preset), `rbd pick-lr` and
    `rbd paper-vs-ours` never import torch, and aggregation not matplotlib: a second or
    two per job otherwise."""
    paths = [make_run(tmp_path, "sgd", s, acc) for s, acc in enumerate([98.0, 97.0])]
    csv, pdf = tmp_path / "t.csv", tmp_path / "t.pdf"
    sweep = tmp_path / "sweep.csv"
    pd.DataFrame(
        dict(method="rbd", model="fc", dataset="mnist5k", lr=[1.0, 2.0], val_acc=[80.0, 85.0])
        | dict(status="done", epochs=3, seed=0)
    ).to_csv(sweep, index=False)
    code = (
        "import sys; from rbd.cli import main; rc = main(sys.argv[1:]);"
        "print(rc, 'torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    aggregate = ["aggregate", "--experiment", "table1", "--kind", "method_table", "--out"]
    render = ["render", "--experiment", "table1", "--kind", "method_table", "--csv"]
    for argv, expected in (
        ([*aggregate, str(csv), *map(str, paths)], "0 False False"),
        ([*render, str(csv), "--pdf", str(pdf)], "0 False True"),
        # Picking rates reads a table: no figures (rbd.report.rates, not rbd.report.plots).
        (["pick-lr", "--csv", str(sweep), "--out", str(tmp_path / "lr.yaml")], "0 False False"),
        (
            ["paper-vs-ours", str(VERIFICATION_CSV), "--out", str(tmp_path / "p.pdf")],
            "0 False True",
        ),
    ):
        done = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
        )
        assert done.stdout.split("\n")[-2] == expected, (argv[0], done.stdout, done.stderr)
    assert is_pdf(pdf)
