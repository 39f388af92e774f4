"""Aggregation on hand-made run directories, checked against numbers computed here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rbd.tables import aggregate, load_runs, render


def _make_run(root, method, seed, val_acc, status="done", dim=250, model="fc"):
    run = root / f"{model}-{method}-{seed}"
    run.mkdir()
    config = {
        "model": model,
        "dataset": "mnist",
        "method": method,
        "dim": dim,
        "seed": seed,
        "distribution": "gaussian",
        "compartments": "none",
        "switch": "none",
        "lr": 0.5,
        "epochs": 2,
    }
    record = {
        "config": config,
        "status": status,
        "num_params": 101_770,
        "num_coordinates": dim,
        "epochs_completed": 2,
    }
    (run / "run.json").write_text(json.dumps(record))
    rows = [
        {
            "epoch": 1,
            "train_loss": 1.0,
            "train_acc": 50.0,
            "val_loss": 1.0,
            "val_acc": 11.0,
            "grad_corr_mean": 0.05,
        },
        {
            "epoch": 2,
            "train_loss": 0.5,
            "train_acc": 60.0,
            "val_loss": 0.7,
            "val_acc": val_acc,
            "grad_corr_mean": 0.06,
        },
    ]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    return run / "run.json"


@pytest.fixture
def runs(tmp_path):
    paths = [_make_run(tmp_path, "sgd", s, acc) for s, acc in enumerate([98.0, 97.0, 99.0])]
    paths += [_make_run(tmp_path, "rbd", s, acc) for s, acc in enumerate([90.0, 94.0])]
    paths.append(_make_run(tmp_path, "rbd", 2, np.nan, status="diverged"))
    paths += [_make_run(tmp_path, "nes", s, 20.0, status="diverged") for s in range(2)]
    return load_runs(paths)


def test_means_stds_and_fractions(runs):
    table = aggregate(runs, "table1").set_index("method")
    assert table.loc["sgd", "val_acc_mean"] == pytest.approx(98.0)
    assert table.loc["sgd", "val_acc_std"] == pytest.approx(np.std([98, 97, 99], ddof=1))
    # The diverged seed is counted, not averaged in.
    assert table.loc["rbd", "n_seeds"] == 3 and table.loc["rbd", "n_diverged"] == 1
    assert table.loc["rbd", "val_acc_mean"] == pytest.approx(92.0)
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
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    text = md.read_text()
    assert "diverged" in text and "[1/3 diverged]" in text
    assert "92.00 ± 2.83 (0.94)" in text and "paper 93.893" in text
    assert "\\begin{tabular}" in tex.read_text()
