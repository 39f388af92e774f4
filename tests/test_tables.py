"""Aggregation on hand-made run directories, checked against numbers computed here."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from rbd.tables import aggregate, experiment_table, load_curves, load_runs, render, wide_table


def make_run(
    root,
    method,
    seed,
    val_accs,
    *,
    status="done",
    dim=250,
    model="fc",
    dataset="mnist",
    distribution="gaussian",
    compartments="none",
    switch="none",
    lr=0.5,
    grad_corr=0.05,
    num_params=101_770,
    num_coordinates=None,
):
    """A run directory as `rbd train` writes it: run.json and one metrics row per epoch.

    `val_accs` is the validation accuracy of each finished epoch (a number: two
    epochs, the first at 11 %). A diverged run is written as train.py does: its
    status says so and metrics.csv holds the epochs finished before it diverged.
    """
    if np.isscalar(val_accs):
        val_accs = [11.0, val_accs]
    name = f"{model}-{dataset}-{method}-{dim}-{distribution}-{compartments}-{switch}-{lr}-{seed}"
    run = root / name.replace(":", "_")
    run.mkdir()
    config = {
        "model": model,
        "dataset": dataset,
        "method": method,
        "dim": dim,
        "seed": seed,
        "distribution": distribution,
        "compartments": compartments,
        "switch": switch,
        "lr": lr,
        "epochs": len(val_accs),
        "augment": False,
    }
    record = {
        "config": config,
        "status": status,
        "num_params": num_params,
        "num_coordinates": num_coordinates if num_coordinates is not None else dim,
        "epochs_completed": len(val_accs),
    }
    (run / "run.json").write_text(json.dumps(record))
    rows = [
        {
            "epoch": e + 1,
            "method": method,
            "train_loss": 1.0 / (e + 1),
            "train_acc": acc,
            "val_loss": 1.0 / (e + 1),
            "val_acc": acc,
            "grad_corr_mean": grad_corr,
        }
        for e, acc in enumerate(val_accs)
    ]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    return run / "run.json"


def is_pdf(path) -> bool:
    """A complete, non-empty PDF: the header, a page, and the end-of-file marker."""
    data = path.read_bytes()
    return (
        data.startswith(b"%PDF-")
        and b"/Page" in data
        and data.rstrip().endswith(b"%%EOF")
        and len(data) > 1000
    )


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
    assert wide.loc[0, "RBD"].startswith(f"61.00 ± 1.41 ({61 / 80:.2f})\ncorr 0.100")
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
