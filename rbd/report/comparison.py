"""The paper's Table 1 and 2 beside ours, cell by cell (`figures/paper_vs_ours.pdf`).

Ours come from either kind of CSV (`read_comparison` tells them by their columns):

- the committed verification summary, `docs/verification/full_protocol.csv`
  (written by `docs/verification/summarise.py`): a row named `table1:...` or
  `table2:...` is a cell of that table, its run key says which; `reading:`
  rows are measurements made to explain a gap, not cells, and are left out;
- the workflow's aggregated tables of the experiments `table1` and `table2`
  (`results/tables/table1.csv`, `table2.csv`, `rbd aggregate`), once the
  paper preset has trained them.

`comparison_cells` gives one row per cell: every cell the paper gives a number
for (`rbd.report.paper`), and every cell of ours in a model-data pair the paper has,
in the tables and for the models where we have at least one cell.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from rbd.report.paper import TABLE1, is_off, paper_value
from rbd.report.style import DATASET_ORDER, METHOD_ORDER, MODEL_ORDER
from rbd.spec import parse_run_key

# The verification summary, relative to the checkout (the workflow's default source).
VERIFICATION_CSV = "docs/verification/full_protocol.csv"
# Workflow experiments (and verification cell prefixes) -> the paper's table.
PAPER_TABLES = {"table1": 1, "table2": 2}
# A cell's column in each table: the method (Table 1); RBD's distribution, or SGD (Table 2).
TABLE_COLUMNS = {
    1: list(METHOD_ORDER),
    2: ["gaussian", "uniform", "rademacher", "bernoulli-official", "sgd"],
}
CELL_COLUMNS = [
    "table", "model", "dataset", "column", "paper", "paper_std", "ours", "ours_std",
    "n_seeds", "seeds", "epochs", "epochs_planned", "status", "n_diverged", "source",
    "table1_run", "diff", "off",
]  # fmt: skip


def _column(table: int, method: str, distribution: str) -> str:
    return method if table == 1 or method == "sgd" else distribution


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def verification_cells(summary: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """Our cells from the verification summary's `table1:` and `table2:` rows."""
    rows = []
    for row in summary.itertuples(index=False):
        prefix = str(row.cell).partition(":")[0]
        if prefix not in PAPER_TABLES:
            continue
        spec = parse_run_key(str(row.run_key))
        seeds = str(row.seeds).split() if not pd.isna(row.seeds) else []
        seeds = seeds or [str(spec.seed)]
        table = PAPER_TABLES[prefix]
        rows.append(
            {
                "table": table,
                "model": spec.model,
                "dataset": spec.dataset,
                "column": _column(table, spec.method, spec.distribution),
                "method": spec.method,
                "dim": spec.dim,
                "distribution": spec.distribution,
                "compartments": spec.compartments,
                "ours": _number(row.val_acc),
                "ours_std": _number(row.val_acc_std) if len(seeds) > 1 else math.nan,
                "n_seeds": len(seeds),
                "seeds": " ".join(seeds),
                "epochs": _number(row.epochs),
                "epochs_planned": spec.epochs,
                "status": str(row.status),
                "n_diverged": 0,
                "source": source,
            }
        )
    return pd.DataFrame(rows)


def aggregated_cells(table: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """Our cells from a workflow table of experiment `table1` or `table2` (`rbd aggregate`)."""
    rows = []
    for row in table.itertuples(index=False):
        experiment = str(row.experiment)
        if experiment not in PAPER_TABLES:
            raise ValueError(
                f"{source or 'table'}: experiment {experiment!r} is not one of the paper's "
                f"tables ({', '.join(PAPER_TABLES)})"
            )
        number = PAPER_TABLES[experiment]
        epochs = _number(getattr(row, "epochs", math.nan))
        n_seeds, n_diverged = int(row.n_seeds), int(row.n_diverged)
        rows.append(
            {
                "table": number,
                "model": row.model,
                "dataset": row.dataset,
                "column": _column(number, row.method, row.distribution),
                "method": row.method,
                "dim": int(row.dim),
                "distribution": row.distribution,
                "compartments": getattr(row, "compartments", "none"),
                "ours": _number(row.val_acc_mean),
                "ours_std": _number(row.val_acc_std),
                # Seeds that diverged have no accuracy: the mean is over the others.
                "n_seeds": n_seeds - n_diverged,
                "seeds": "",
                "epochs": epochs,
                "epochs_planned": epochs,
                "status": "done",
                "n_diverged": n_diverged,
                "source": source,
            }
        )
    return pd.DataFrame(rows)


def read_comparison(paths) -> pd.DataFrame:
    """Our cells from CSV files of either kind (the module docstring), in one table."""
    frames = []
    for path in map(Path, paths):
        data = pd.read_csv(path, keep_default_na=False, na_values=[""])
        if {"cell", "run_key", "val_acc"} <= set(data.columns):
            frames.append(verification_cells(data, source=path.name))
        elif {"experiment", "val_acc_mean", "n_seeds"} <= set(data.columns):
            frames.append(aggregated_cells(data, source=path.name))
        else:
            raise ValueError(
                f"{path}: neither a verification summary (columns cell, run_key, val_acc) "
                "nor an aggregated table (experiment, val_acc_mean, n_seeds)"
            )
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def paper_cells(table: int, model: str) -> list[tuple[str, str, float, float]]:
    """(dataset, column, mean, std) of every cell of the paper's `table` for `model`.

    Table 2's Gaussian column is Table 1's RBD (the same training) and its SGD
    Table 1's SGD; paper.md quotes no number for its other distributions.
    """
    found = []
    for (m, dataset), methods in TABLE1.items():
        if m != model:
            continue
        for column in TABLE_COLUMNS[table]:
            method = "rbd" if column == "gaussian" else column
            if method in methods:
                found.append((dataset, column, *methods[method]))
    return found


def comparison_cells(ours: pd.DataFrame) -> pd.DataFrame:
    """One row per cell to draw, in the paper's order, with the paper's value and ours.

    Tables and models without a cell of ours are left out; in the others every
    cell the paper gives a number for is kept (`ours` NaN where we have none),
    and every cell of ours in a model-data pair the paper has (`paper` NaN where
    it gives none: Table 2's Uniform, Rademacher, Bernoulli, or a cell of ours
    with settings other than the paper's). A Table 2 panel without its own
    Gaussian or SGD cell takes Table 1's, the same training (`table1_run` True).
    `off`: ours outside `rbd.report.paper.off_bound` of the paper's mean.
    """
    if not len(ours):
        return pd.DataFrame(columns=CELL_COLUMNS)
    ours = ours[[(m, d) in TABLE1 for m, d in zip(ours["model"], ours["dataset"], strict=True)]]
    panels = sorted(set(zip(ours["table"], ours["model"], strict=True)))
    cells: dict[tuple, dict] = {}
    for table, model in panels:
        for dataset, column, mean, std in paper_cells(table, model):
            cells[(table, model, dataset, column)] = {"paper": mean, "paper_std": std}
    for row in ours.to_dict("records"):
        value = paper_value(row["model"], row["dataset"], row["method"], row["dim"],
                            row["distribution"], row["compartments"])  # fmt: skip
        paper = dict(zip(("paper", "paper_std"), value or (math.nan, math.nan), strict=True))
        cells[(row["table"], row["model"], row["dataset"], row["column"])] = row | paper
    for (table, model, dataset, column), cell in cells.items():
        first = cells.get((1, model, dataset, "rbd" if column == "gaussian" else column), {})
        if table == 2 and "ours" not in cell and "ours" in first:
            cell |= {k: v for k, v in first.items() if k not in ("table", "column")}
            cell["table1_run"] = True
    rank = {name: i for i, name in enumerate([*MODEL_ORDER, *DATASET_ORDER])}
    columns = {t: {c: i for i, c in enumerate(names)} for t, names in TABLE_COLUMNS.items()}
    keys = sorted(
        cells,
        key=lambda k: (k[0], rank.get(k[1], 99), rank.get(k[2], 99), columns[k[0]].get(k[3], 99)),
    )
    frame = pd.DataFrame(
        [cells[k] | dict(zip(("table", "model", "dataset", "column"), k, strict=True))
         for k in keys]
    ).reindex(columns=CELL_COLUMNS)  # fmt: skip
    frame["table1_run"] = frame["table1_run"].eq(True)
    frame["diff"] = frame["ours"] - frame["paper"]
    frame["off"] = [
        is_off(o, p, s)
        for o, p, s in zip(frame["ours"], frame["paper"], frame["paper_std"], strict=True)
    ]
    return frame
