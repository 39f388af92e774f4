"""Aggregate finished runs into tidy pandas tables and render them (PDF, Markdown, LaTeX).

One row of `load_runs` is one run (its last epoch); `aggregate` averages over
seeds. A diverged run is kept and counted, never silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rbd.paper import paper_val_acc

GROUP_KEYS = ["model", "dataset", "method", "dim", "distribution", "compartments", "switch", "lr"]
METHOD_ORDER = ["nes", "fpd", "rbd", "sgd"]
METHOD_LABELS = {"nes": "NES", "fpd": "FPD", "rbd": "RBD", "sgd": "SGD"}


def load_runs(paths) -> pd.DataFrame:
    """One row per run: its settings, status and last-epoch metrics."""
    rows = []
    for path in paths:
        path = Path(path)
        run_dir = path if path.is_dir() else path.parent
        record = json.loads((run_dir / "run.json").read_text())
        metrics = pd.read_csv(run_dir / "metrics.csv")
        cfg = record["config"]
        row = {key: cfg[key] for key in GROUP_KEYS if key in cfg}
        row |= {
            "seed": cfg["seed"],
            "epochs": cfg["epochs"],
            "status": record["status"],
            "num_params": record["num_params"],
            "num_coordinates": record.get("num_coordinates"),
            "epochs_completed": record.get("epochs_completed", len(metrics)),
            "run_dir": str(run_dir),
        }
        last = metrics.iloc[-1] if len(metrics) else pd.Series(dtype=float)
        for column in ("val_acc", "val_loss", "train_acc", "train_loss", "grad_corr_mean"):
            row[column] = float(last[column]) if column in last else np.nan
        if record["status"] != "done":
            row["val_acc"] = np.nan
        row["test_acc"] = record.get("test_acc", np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(runs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Mean and std over seeds per configuration, with the fraction of SGD and the paper's value.

    Columns: model, dataset, method, dim, distribution, compartments, switch, lr,
    n_seeds, n_diverged, val_acc_mean, val_acc_std, grad_corr_mean, frac_sgd,
    paper_val_acc, num_params, num_coordinates.
    """
    keys = [k for k in GROUP_KEYS if k in runs.columns]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    table = grouped.agg(
        n_seeds=("seed", "size"),
        n_diverged=("status", lambda s: int((s == "diverged").sum())),
        val_acc_mean=("val_acc", "mean"),
        val_acc_std=("val_acc", lambda s: float(s.std(ddof=1)) if s.count() > 1 else np.nan),
        test_acc_mean=("test_acc", "mean"),
        grad_corr_mean=("grad_corr_mean", "mean"),
        num_params=("num_params", "first"),
        num_coordinates=("num_coordinates", "first"),
    ).reset_index()
    sgd = table[table["method"] == "sgd"].groupby(["model", "dataset"])["val_acc_mean"].mean()
    table["frac_sgd"] = [
        row.val_acc_mean / sgd.get((row.model, row.dataset), np.nan) for row in table.itertuples()
    ]
    table["paper_val_acc"] = [
        paper_val_acc(row.model, row.dataset, row.method, row.dim) for row in table.itertuples()
    ]
    table.insert(0, "experiment", experiment)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    table = table.sort_values(
        ["model", "dataset", "method"], key=lambda s: s.map(order) if s.name == "method" else s
    )
    return table.reset_index(drop=True)


def _cell(row) -> str:
    if row.n_diverged and row.n_diverged == row.n_seeds:
        return "diverged"
    if np.isnan(row.val_acc_mean):
        return "-"
    text = f"{row.val_acc_mean:.2f}"
    if not np.isnan(row.val_acc_std):
        text += f" ± {row.val_acc_std:.2f}"
    if row.method != "sgd" and not np.isnan(row.frac_sgd):
        text += f" ({row.frac_sgd:.2f})"
    if row.n_diverged:
        text += f" [{row.n_diverged}/{row.n_seeds} diverged]"
    if row.paper_val_acc is not None and not pd.isna(row.paper_val_acc):
        text += f"\npaper {row.paper_val_acc:g}"
    return text


def method_table(table: pd.DataFrame) -> pd.DataFrame:
    """Wide view like the paper's Table 1: one row per model-data pair, one column per method."""
    table = table.copy()
    table["pair"] = table["model"].str.upper() + "-" + table["dataset"]
    table["D"] = table["num_params"].map("{:,}".format)
    table["cell"] = [_cell(row) for row in table.itertuples()]
    methods = [m for m in METHOD_ORDER if m in set(table["method"])]
    wide = table.pivot_table(index=["pair", "D"], columns="method", values="cell", aggfunc="first",
                             sort=False)  # fmt: skip
    wide = wide.reindex(columns=methods).fillna("-")
    wide.columns = [METHOD_LABELS[m] for m in wide.columns]
    return wide.reset_index().rename(columns={"pair": "model-data"})


def render(table: pd.DataFrame, experiment: str, *, pdf=None, md=None, tex=None) -> None:
    """Write the table as a PDF page, a Markdown file and a LaTeX tabular."""
    from rbd.io import write_text

    wide = method_table(table)
    caption = (
        f"{experiment}: validation accuracy (%) after the last epoch, mean ± std over seeds, "
        "(fraction of SGD); 'paper' is the value the paper reports for the full data set."
    )
    if md is not None:
        write_text(md, f"# {experiment}\n\n{caption}\n\n{_markdown(wide)}\n")
    if tex is not None:
        body = wide.replace("\n", " ", regex=True).to_latex(index=False, escape=True)
        write_text(tex, f"% {caption}\n{body}")
    if pdf is not None:
        _table_pdf(wide, caption, Path(pdf))


def _markdown(wide: pd.DataFrame) -> str:
    header = "| " + " | ".join(wide.columns) + " |"
    rule = "|" + "|".join("---" for _ in wide.columns) + "|"
    lines = [header, rule]
    for row in wide.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("\n", "<br>") for v in row) + " |")
    return "\n".join(lines)


def _table_pdf(wide: pd.DataFrame, caption: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    n_rows = len(wide) + 1
    fig, ax = plt.subplots(figsize=(2.0 + 2.3 * (len(wide.columns) - 1), 1.2 + 0.62 * n_rows))
    ax.axis("off")
    cells = ax.table(
        cellText=wide.values.tolist(),
        colLabels=list(wide.columns),
        loc="center",
        cellLoc="center",
    )
    cells.auto_set_font_size(False)
    cells.set_fontsize(9)
    cells.scale(1.0, 2.6)
    for (r, _), cell in cells.get_celld().items():
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
    ax.set_title("\n".join(textwrap.wrap(caption, 100)), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.pdf")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
