"""figures/paper_vs_ours.pdf: the values drawn are the CSV's, read back from the figure.

Each check reads the numbers off the matplotlib artists (the errorbar markers and
segments, the shaded bands, the row texts) and compares them with the CSV as written
here or as committed, never with numbers computed by `rbd.report.comparison`.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest

from rbd.cli import main
from rbd.report.comparison import comparison_cells, read_comparison
from rbd.report.plots import OFF_GID, plot_paper_vs_ours
from tests.helpers import ROOT, is_pdf

COMMITTED = ROOT / "docs/verification/full_protocol.csv"
HEADER = (
    "cell,run_key,bases_version,seeds,status,epochs,val_acc,val_acc_std,val_acc_last10_mean,"
    "grad_corr,grad_corr_tensors,paper,paper_std,diff\n"
)
# A small verification summary: cells of Table 1 on both models and of Table 2, one
# run not finished, and a reading (not a paper cell: never drawn).
SMALL = HEADER + (
    "table1:rbd-fc-mnist,mnist/fc/rbd/d250_gaussian/lr-1.0_e-100_b-32_aug-1_bv-2/seed0,"
    "2,0 1 2,done,100,93.5,0.3,93.4,,,93.893,0.024,-0.39\n"
    "table1:nes-fc-mnist,mnist/fc/nes/d250_gaussian/lr-1.0_e-100_b-32_aug-1_nnorm-1_bv-2/seed0,"
    "2,0 1,done,100,27.0,2.5,27.1,,,22.5,1.7,4.5\n"
    "table1:sgd-fc-mnist,mnist/fc/sgd/d0_none/lr-0.125_e-100_b-32_aug-1/seed0,"
    ",,done,100,96.9,,96.8,,,98.27,0.09,-1.37\n"
    "table1:nes-fc-fashion_mnist,fashion_mnist/fc/nes/d250_gaussian/"
    "lr-0.5_e-100_b-32_aug-1_nnorm-1_bv-2/seed0,2,0,done,100,49.82,,49.73,,,45,6,4.82\n"
    "table1:fpd-cnn-mnist,mnist/cnn/fpd/d250_gaussian/lr-0.0625_e-100_b-32_aug-1_off-1_bv-2/"
    "seed0,2,0,unfinished,37,85.1,,84.0,,,88.9,0.6,-3.8\n"
    "table2:rbd-uniform-fc-mnist,mnist/fc/rbd/d250_uniform/lr-1.0_e-100_b-32_aug-1_bv-2/seed0,"
    "2,0,done,100,90.2,,90.0,,,,,\n"
    "reading:rbd-fc-mnist-no-augmentation,mnist/fc/rbd/d250_gaussian/lr-1.0_e-100_b-32_bv-2/"
    "seed0,2,0,unfinished,80,85.89,,85.98,,,,,\n"
)
# Where each cell of ours is drawn, written out by hand: (panel title, row label).
WHERE = {
    "table1:rbd-fc-mnist": ("Table 1, FC", "MNIST  RBD"),
    "table1:nes-fc-mnist": ("Table 1, FC", "MNIST  NES"),
    "table1:sgd-fc-mnist": ("Table 1, FC", "MNIST  SGD"),
    "table1:nes-fc-fashion_mnist": ("Table 1, FC", "FMNIST  NES"),
    "table1:fpd-cnn-mnist": ("Table 1, CNN", "MNIST  FPD"),
    "table2:rbd-uniform-fc-mnist": ("Table 2, FC", "MNIST  Uniform"),
}
# Off: more than 2 paper std or 1.5 points from the paper, whichever is larger.
OFF = {
    "table1:rbd-fc-mnist": False,  # 0.39 off: 16 std, but under 1.5 points
    "table1:nes-fc-mnist": True,  # 4.5 off, above 2 x 1.7 = 3.4
    "table1:sgd-fc-mnist": False,  # 1.37 off: 15 std, but under 1.5 points
    "table1:nes-fc-fashion_mnist": False,  # 4.82 off, under 2 x 6 = 12
    "table1:fpd-cnn-mnist": True,  # 3.8 off, above 1.5 and 2 x 0.6
    "table2:rbd-uniform-fc-mnist": False,  # the paper has no number
}


def drawn(fig) -> dict[tuple[str, str], dict]:
    """(panel title up to its colon, row label) -> what the figure shows on that row:
    "paper" and "ours" as (marker x, error bar's left end, right end), "off" (a shaded
    band behind the row), "text" (the numbers written beside it)."""
    rows: dict[tuple[str, str], dict] = {}
    for ax in fig.axes:
        panel = ax.get_title().partition(":")[0]
        ticks = list(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()],
                         strict=True))  # fmt: skip

        def row(y, panel=panel, ticks=ticks):
            tick, label = min(ticks, key=lambda pair: abs(pair[0] - y))
            assert abs(tick - y) < 0.3, (panel, y, ticks)
            return rows.setdefault((panel, label), {"off": False})

        for container in ax.containers:
            marker, _, (segments,) = container.lines
            for x, y, segment in zip(marker.get_xdata(), marker.get_ydata(),
                                     segments.get_segments(), strict=True):  # fmt: skip
                assert np.allclose(segment[:, 1], y)  # a horizontal bar through the marker
                row(y)[container.get_label()] = (x, *sorted(segment[:, 0]))
        for patch in ax.patches:
            if patch.get_gid() == OFF_GID:
                ys = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 1]
                row((ys.min() + ys.max()) / 2)["off"] = True
        for text in ax.texts:
            row(text.get_position()[1])["text"] = text.get_text()
    return rows


def figure_of(text: str, tmp_path, name="summary.csv"):
    path = tmp_path / name
    path.write_text(text)
    return plot_paper_vs_ours(comparison_cells(read_comparison([path])))


def _float(text: str, default=np.nan) -> float:
    return float(text) if text else default


def test_values_drawn_are_the_csvs(tmp_path):
    rows = drawn(figure_of(SMALL, tmp_path))
    for cell in csv.DictReader(io.StringIO(SMALL)):
        if cell["cell"].startswith("reading:"):
            continue
        shown = rows[WHERE[cell["cell"]]]
        mean, std = float(cell["val_acc"]), _float(cell["val_acc_std"], 0.0)
        assert shown["ours"] == pytest.approx((mean, mean - std, mean + std)), cell["cell"]
        if cell["paper"]:
            paper, paper_std = float(cell["paper"]), float(cell["paper_std"])
            expected = (paper, paper - paper_std, paper + paper_std)
            assert shown["paper"] == pytest.approx(expected), cell["cell"]
        else:
            assert "paper" not in shown and "paper: no number" in shown["text"]
        assert shown["off"] is OFF[cell["cell"]], cell["cell"]
        assert ("outside" in shown["text"]) is OFF[cell["cell"]]
    # Seeds and epochs beside the numbers; a run not finished says how far it got.
    assert "(3 seeds, 100 epochs)" in rows[WHERE["table1:rbd-fc-mnist"]]["text"]
    assert "(1 seed, 100 epochs)" in rows[WHERE["table1:sgd-fc-mnist"]]["text"]
    assert "(1 seed, epoch 37 of 100)" in rows[WHERE["table1:fpd-cnn-mnist"]]["text"]
    # The reading is not a paper cell.
    assert all(85.89 not in (r.get("ours") or ()) for r in rows.values())


def test_paper_only_cells_stay_and_panels_without_ours_go(tmp_path):
    rows = drawn(figure_of(SMALL, tmp_path))
    assert {panel for panel, _ in rows} == {"Table 1, FC", "Table 1, CNN", "Table 2, FC"}
    # The paper's cells beside ours, e.g. FC on CIFAR-10 (paper.md's Table 1), no run of ours.
    cifar = rows[("Table 1, FC", "CIFAR10  RBD")]
    assert cifar["paper"] == pytest.approx((43.77, 43.55, 43.99)) and "ours" not in cifar
    assert "not run" in cifar["text"] and not cifar["off"]
    assert len([key for key in rows if key[0] == "Table 1, FC"]) == 12  # 3 data sets x 4
    # Table 2's Gaussian column is Table 1's RBD training: its run stands in.
    gaussian = rows[("Table 2, FC", "MNIST  Gaussian")]
    assert gaussian["ours"] == pytest.approx((93.5, 93.2, 93.8))
    assert gaussian["paper"] == pytest.approx((93.893, 93.869, 93.917))
    assert "Table 1's runs" in gaussian["text"]


def test_workflow_tables_are_drawn_with_seeds_and_divergence(tmp_path):
    """From `results/`: the aggregated tables of experiments table1 and table2."""
    table = (
        "experiment,model,dataset,method,dim,distribution,compartments,switch,lr,n_seeds,"
        "n_diverged,val_acc_mean,val_acc_std,epochs\n"
        "table1,fc,mnist,rbd,250,gaussian,none,none,1.0,3,0,93.1,0.5,100\n"
        "table1,fc,mnist,nes,250,gaussian,none,none,1.0,3,3,,,100\n"
        "table1,fc,mnist,fpd,250,gaussian,none,none,1.0,3,1,70.25,1.25,100\n"
        "table1,fc,mnist5k,rbd,250,gaussian,none,none,4.0,2,0,88.85,0.49,5\n"
    )
    rows = drawn(figure_of(table, tmp_path, name="table1.csv"))
    rbd = rows[("Table 1, FC", "MNIST  RBD")]
    assert (
        rbd["ours"] == pytest.approx((93.1, 92.6, 93.6)) and "(3 seeds, 100 epochs)" in rbd["text"]
    )
    assert rbd["off"] is False
    nes = rows[("Table 1, FC", "MNIST  NES")]
    assert "ours" not in nes and "diverged" in nes["text"]
    fpd = rows[("Table 1, FC", "MNIST  FPD")]
    assert fpd["ours"] == pytest.approx((70.25, 69.0, 71.5)) and "1 diverged" in fpd["text"]
    assert fpd["off"] is True
    assert not any("MNIST5k" in label for _, label in rows)  # no paper counterpart
    # The quick preset's tables (mnist5k only): a figure that says there is nothing to compare.
    quick = figure_of("\n".join(table.splitlines()[::4]) + "\n", tmp_path, name="quick.csv")
    assert [t.get_text() for t in quick.axes[0].texts] == [
        "no cell of ours has a paper counterpart"
    ]


def test_committed_verification_summary_is_drawn_as_it_is(tmp_path):
    """The README's figure: every Table 1 and 2 cell of the committed CSV, as it is."""
    fig = plot_paper_vs_ours(comparison_cells(read_comparison([COMMITTED])))
    rows = drawn(fig)
    methods = {"sgd": "SGD", "rbd": "RBD", "fpd": "FPD", "nes": "NES"}
    distributions = {"d250_gaussian": "Gaussian", "d250_uniform": "Uniform",
                     "d250_rademacher": "Rademacher", "d0_none": "SGD",
                     "d250_bernoulli-official": "Bernoulli (authors')"}  # fmt: skip
    datasets = {"mnist": "MNIST", "fashion_mnist": "FMNIST", "cifar10": "CIFAR10"}
    with open(COMMITTED, newline="") as f:
        cells = [c for c in csv.DictReader(f) if c["cell"].startswith(("table1:", "table2:"))]
    assert cells
    for cell in cells:
        dataset, model, method, bases = cell["run_key"].split("/")[:4]
        table = cell["cell"].partition(":")[0][-1]
        column = methods[method] if table == "1" else distributions[bases]
        shown = rows[(f"Table {table}, {model.upper()}", f"{datasets[dataset]}  {column}")]
        mean, std = float(cell["val_acc"]), _float(cell["val_acc_std"], 0.0)
        assert shown["ours"] == pytest.approx((mean, mean - std, mean + std)), cell["cell"]
        if table == "1":
            paper, paper_std = float(cell["paper"]), float(cell["paper_std"])
            expected = (paper, paper - paper_std, paper + paper_std)
            assert shown["paper"] == pytest.approx(expected), cell["cell"]
            off = abs(mean - paper) > max(2 * paper_std, 1.5)
            assert shown["off"] is off, cell["cell"]
        planned = re.search(r"_e-(\d+)", cell["run_key"])[1]
        reached = f"epoch {cell['epochs']} of {planned}"
        if cell["status"] == "done":
            reached = f"{cell['epochs']} epochs"
        assert reached in shown["text"], cell["cell"]


def test_cli_writes_pdf_or_png_and_refuses_other_csvs(tmp_path, capsys):
    out = tmp_path / "paper_vs_ours"
    for suffix in (".pdf", ".png"):
        assert main(["paper-vs-ours", str(COMMITTED), "--out", str(out.with_suffix(suffix))]) == 0
        assert "outside the bound" in capsys.readouterr().out
    assert is_pdf(out.with_suffix(".pdf"))
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["paper-vs-ours", str(bad), "--out", str(out.with_suffix(".pdf"))]) == 1
    assert "neither a verification summary" in capsys.readouterr().err
