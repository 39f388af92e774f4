"""Aggregate finished runs into tidy pandas tables and render them (PDF, Markdown, LaTeX).

One row of `load_runs` is one run (its last epoch); `load_curves` has one row
per run and epoch; `aggregate` averages over seeds. A diverged run is kept and
counted, never silently dropped: its accuracy is left out of the mean and the
cell says how many seeds diverged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rbd.report.kinds import TABLE_KINDS, kind_of
from rbd.report.paper import paper_frac_sgd, paper_val_acc
from rbd.report.style import (
    DATASET_ORDER,
    DISTRIBUTION_LABELS,
    METHOD_LABELS,
    METHOD_ORDER,
    MODEL_ORDER,
    new_figure,
    pair_label,
    save_pdf,
    styled,
)
from rbd.spec import METRICS, RUN_JSON, RunDirectoryError

if TYPE_CHECKING:  # aggregation (no figure) does not import matplotlib
    from matplotlib.figure import Figure

GROUP_KEYS = ["model", "dataset", "method", "dim", "distribution", "compartments", "switch", "lr"]
RUN_KEYS = GROUP_KEYS + ["seed", "epochs", "augment", "batch_size"]
# Settings of distributed runs (rbd.optim.distributed); absent from one-process runs.
DISTRIBUTED_KEYS = ["workers", "sharing", "combine"]
# grad_corr_mean: one cosine between the whole update and the whole gradient per step;
# grad_corr_tensors_mean: the mean of the per-tensor cosines, the authors' statistic
# (models/rbd.py records "correlation/<weight>" per tensor). Epoch means of both.
METRIC_COLUMNS = (
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "grad_corr_mean",
    "grad_corr_tensors_mean",
)
# Per-epoch timing and traffic of distributed runs (rbd.optim.distributed.STEP_TIME_COLUMNS
# and the byte counts), in seconds per step and bytes per step.
SCALING_COLUMNS = (
    "step_s",
    "compute_s",
    "regen_s",
    "comm_s",
    "bytes_per_step",
    "sgd_bytes_per_step",
)
DIVERGED = "diverged"


def _read_run(path) -> tuple[dict, dict, pd.DataFrame]:
    """A run directory's record (run.json), its settings as table columns, and metrics."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    try:
        record = json.loads((run_dir / RUN_JSON).read_text())
    except (OSError, ValueError) as err:
        raise RunDirectoryError(f"{run_dir / RUN_JSON} cannot be read: {err}") from None
    try:
        metrics = pd.read_csv(run_dir / METRICS)
    except (OSError, ValueError) as err:  # pandas' parser errors are ValueErrors
        raise RunDirectoryError(f"{run_dir / METRICS} cannot be read: {err}") from None
    cfg = record["config"]
    settings = {key: cfg[key] for key in RUN_KEYS + DISTRIBUTED_KEYS if key in cfg}
    settings |= {"status": record["status"], "run_dir": str(run_dir)}
    return record, settings, metrics


def load_runs(paths) -> pd.DataFrame:
    """One row per run: its settings, status and last-epoch metrics.

    A run that did not finish (`status` other than "done") keeps its row, with
    `val_acc` NaN: its last number is not a result.
    """
    rows = []
    for path in paths:
        record, row, metrics = _read_run(path)
        row |= {
            "num_params": record["num_params"],
            "num_coordinates": record.get("num_coordinates"),
            "epochs_completed": record.get("epochs_completed", len(metrics)),
        }
        last = metrics.iloc[-1] if len(metrics) else pd.Series(dtype=float)
        for column in METRIC_COLUMNS:
            row[column] = float(last[column]) if column in last else np.nan
        if record["status"] != "done":
            row["val_acc"] = np.nan
        row["test_acc"] = record.get("test_acc", np.nan)
        row["step_s"] = measured_step_seconds(metrics, row.get("batch_size", 32))
        rows.append(row)
    return pd.DataFrame(rows)


def measured_step_seconds(metrics: pd.DataFrame, batch_size: int) -> float:
    """Median over epochs of the training time per step (s), NaN without timings.

    A step is one minibatch: an epoch of n images has ceil(n / batch_size)
    steps, n = images_per_s x seconds (NES with offspring batches scores one
    offspring per minibatch: its step is one offspring, not one update).
    Distributed runs log `step_s` itself (worker 0's mean per step). The
    median leaves out an epoch slowed down by a neighbouring job; `seconds`
    excludes evaluation and checkpoints.
    """
    if "step_s" in metrics and metrics["step_s"].notna().any():
        return float(metrics["step_s"].median())
    if not {"seconds", "images_per_s"} <= set(metrics.columns) or not len(metrics):
        return np.nan
    images = (metrics["images_per_s"] * metrics["seconds"]).round()
    steps = np.ceil(images / batch_size)
    return float((metrics["seconds"] / steps.where(steps > 0)).median())


def load_curves(paths, extra_columns=()) -> pd.DataFrame:
    """One row per run and epoch (tidy): settings, status, `epoch` and the epoch's metrics.

    Curves of diverged runs are kept up to the last finished epoch; `status`
    says that the run diverged afterwards. `extra_columns` of metrics.csv are
    kept too where a run has them (the timing columns of distributed runs).
    """
    frames = []
    for path in paths:
        record, settings, metrics = _read_run(path)
        wanted = (*METRIC_COLUMNS, *extra_columns)
        columns = ["epoch"] + [c for c in wanted if c in metrics.columns]
        frame = metrics[columns].copy()
        if "method" in metrics.columns:
            frame["phase"] = metrics["method"]
        for key, value in settings.items():
            frame[key] = value
        frame["num_params"] = record["num_params"]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=RUN_KEYS + ["epoch", "status"])
    return pd.concat(frames, ignore_index=True)


def _std(values: pd.Series) -> float:
    """Sample standard deviation over the finished seeds (NaN with fewer than two)."""
    return float(values.std(ddof=1)) if values.count() > 1 else np.nan


def aggregate(runs: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Mean and std over seeds per configuration, with the fraction of SGD and the paper's value.

    Columns: experiment, model, dataset, method, dim, distribution, compartments,
    switch, lr, n_seeds, n_diverged, val_acc_mean, val_acc_std, test_acc_mean,
    grad_corr_mean, grad_corr_std, grad_corr_tensors_mean, grad_corr_tensors_std,
    num_params, num_coordinates, step_s_mean, epochs (the runs' planned epochs),
    frac_sgd, step_ratio_sgd, paper_val_acc, paper_frac_sgd. `frac_sgd` divides
    by the mean SGD accuracy of the same model and data set, `step_ratio_sgd`
    the mean seconds per step (`measured_step_seconds`, over all seeds, diverged ones
    too) by SGD's.
    """
    keys = [k for k in GROUP_KEYS if k in runs.columns]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    table = grouped.agg(
        n_seeds=("seed", "size"),
        n_diverged=("status", lambda s: int((s == DIVERGED).sum())),
        val_acc_mean=("val_acc", "mean"),
        val_acc_std=("val_acc", _std),
        test_acc_mean=("test_acc", "mean"),
        grad_corr_mean=("grad_corr_mean", "mean"),
        grad_corr_std=("grad_corr_mean", _std),
        grad_corr_tensors_mean=("grad_corr_tensors_mean", "mean"),
        grad_corr_tensors_std=("grad_corr_tensors_mean", _std),
        num_params=("num_params", "first"),
        num_coordinates=("num_coordinates", "first"),
        **({"step_s_mean": ("step_s", "mean")} if "step_s" in runs else {}),
        **({"epochs": ("epochs", "max")} if "epochs" in runs else {}),
    ).reset_index()
    sgd = table[table["method"] == "sgd"].groupby(["model", "dataset"])
    for column, ratio in (("val_acc_mean", "frac_sgd"), ("step_s_mean", "step_ratio_sgd")):
        if column in table:
            reference = sgd[column].mean()
            table[ratio] = [
                value / reference.get(pair, np.nan)
                for value, pair in zip(
                    table[column], zip(table["model"], table["dataset"], strict=True), strict=True
                )
            ]
    table["paper_val_acc"] = [
        paper_val_acc(
            row.model,
            row.dataset,
            row.method,
            row.dim,
            getattr(row, "distribution", "gaussian"),
            getattr(row, "compartments", "none"),
        )
        for row in table.itertuples()
    ]
    table["paper_frac_sgd"] = [
        paper_frac_sgd(row.model, row.dataset, row.method, getattr(row, "compartments", "none"))
        for row in table.itertuples()
    ]
    table.insert(0, "experiment", experiment)
    sort_keys = [k for k in ("model", "dataset", "method", "dim", "compartments") if k in table]
    return table.sort_values(sort_keys, key=paper_order, kind="stable").reset_index(drop=True)


def paper_order(column: pd.Series) -> pd.Series:
    """A sort key that puts models, data sets and methods in the paper's order."""
    orders = {"model": MODEL_ORDER, "dataset": DATASET_ORDER, "method": METHOD_ORDER}
    if column.name not in orders:
        return column
    rank = {name: i for i, name in enumerate(orders[column.name])}
    return column.map(lambda v: rank.get(v, len(rank)))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value)


def _table_cell(row, *, corr: bool = False) -> str:
    """`mean ± std (fraction of SGD)`, diverged seeds marked, the paper's value below."""
    n_diverged, n_seeds = int(row.n_diverged), int(row.n_seeds)
    if n_diverged and n_diverged == n_seeds:
        text = f"diverged ({n_diverged}/{n_seeds})"
    elif _missing(row.val_acc_mean):
        text = "-"
    else:
        text = f"{row.val_acc_mean:.2f}"
        if not _missing(row.val_acc_std):
            text += f" ± {row.val_acc_std:.2f}"
        if row.method != "sgd" and not _missing(row.frac_sgd):
            text += f" ({row.frac_sgd:.2f})"
        if n_diverged:
            text += f" [{n_diverged}/{n_seeds} diverged]"
    # Table 3 shows the authors' statistic, the mean of the per-tensor cosines.
    if corr and row.method != "sgd" and not _missing(row.grad_corr_tensors_mean):
        text += f"\ncorr {row.grad_corr_tensors_mean:.3f}"
    if not _missing(row.paper_val_acc):
        text += f"\npaper {row.paper_val_acc:g}"
    if not _missing(getattr(row, "paper_frac_sgd", None)):
        text += f"\npaper ({row.paper_frac_sgd:.2f} of SGD)"
    return text


def _pair(table: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [pair_label(m, d) for m, d in zip(table["model"], table["dataset"], strict=True)],
        index=table.index,
        dtype=object,
    )


def _factor(compartments: str) -> str:
    kind, _, value = str(compartments).partition(":")
    return f"{float(value):g}x" if kind == "compression" else str(compartments)


def wide_table(table: pd.DataFrame, kind: str = "method_table") -> pd.DataFrame:
    """The paper-like view of an aggregated table, built as the kind's entry in
    rbd.report.kinds names (WIDE_TABLES)."""
    builder = kind_of(kind).table
    if builder is None:
        raise ValueError(f"experiment kind {kind!r} has no table; choose one of {TABLE_KINDS}")
    return WIDE_TABLES[builder](table)


def _cells(table: pd.DataFrame, corr: bool = False) -> pd.DataFrame:
    """The aggregated table with its model-data pair, D and formatted cell."""
    table = table.copy()
    table["model-data"] = _pair(table)
    table["D"] = table["num_params"].map("{:,}".format)
    table["cell"] = [_table_cell(row, corr=corr) for row in table.itertuples()]
    return table


def _pivot(table: pd.DataFrame, column: str, labels: dict, order: list) -> pd.DataFrame:
    wide = table.pivot_table(index=["model-data", "D"], columns=column, values="cell",
                             aggfunc="first", sort=False)  # fmt: skip
    wide = wide.reindex(columns=order).fillna("-")
    wide.columns = [labels[c] for c in wide.columns]
    return wide.reset_index()


def _method_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per model-data pair, one column per method (Table 1)."""
    table = _cells(table)
    order = [m for m in METHOD_ORDER if m in set(table["method"])]
    return _pivot(table, "method", METHOD_LABELS, order)


def _distribution_table(table: pd.DataFrame) -> pd.DataFrame:
    """One column per RBD direction distribution, SGD last (Table 2)."""
    table = _cells(table)
    table["column"] = np.where(table["method"] == "sgd", "sgd", table["distribution"])
    labels = DISTRIBUTION_LABELS | {"sgd": "SGD"}
    return _pivot(table, "column", labels, [d for d in labels if d in set(table["column"])])


def _compression_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per pair and compression factor, with the number of trainable coordinates;
    one column per method with gradient correlation; SGD (uncompressed) on every row
    (Table 3)."""
    table = _cells(table, corr=True)
    sgd = table[table["method"] == "sgd"].set_index("model-data")["cell"]
    sub = table[table["method"] != "sgd"].copy()
    sub["f"] = sub["compartments"].map(
        lambda c: float(str(c).partition(":")[2]) if str(c).startswith("compression") else 1.0
    )
    sub["compression"] = sub["compartments"].map(_factor)
    sub["coordinates"] = sub["num_coordinates"].map(lambda n: "-" if _missing(n) else f"{n:,.0f}")
    sub = sub.sort_values(["model-data", "f"], kind="stable")
    methods = [m for m in METHOD_ORDER if m in set(sub["method"])]
    wide = sub.pivot_table(
        index=["model-data", "D", "compression"], columns="method", values="cell",
        aggfunc="first", sort=False,
    )  # fmt: skip
    coords = sub.pivot_table(
        index=["model-data", "D", "compression"], columns="method", values="coordinates",
        aggfunc="first", sort=False,
    )  # fmt: skip
    wide = wide.reindex(columns=methods).fillna("-")
    wide.columns = [METHOD_LABELS[m] for m in wide.columns]
    wide.insert(0, "coordinates", coords.bfill(axis=1).iloc[:, 0] if len(coords) else [])
    wide = wide.reset_index()
    if len(sgd):
        wide["SGD"] = wide["model-data"].map(sgd).fillna("-")
    return wide


def _step_text(row) -> str:
    if _missing(getattr(row, "step_s_mean", None)):
        return ""
    text = f"\n{1000 * row.step_s_mean:.1f} ms/step"
    if row.method != "sgd" and not _missing(getattr(row, "step_ratio_sgd", None)):
        text += f" ({row.step_ratio_sgd:.1f}x SGD)"
    return text


def _bases_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per pair and d, one column per distribution, SGD (any d) on every row."""
    table = _cells(table)
    table["cell"] = table["cell"] + [_step_text(row) for row in table.itertuples()]
    sgd = table[table["method"] == "sgd"].set_index("model-data")["cell"]
    sub = table[table["method"] != "sgd"]
    wide = sub.pivot_table(
        index=["model-data", "D", "dim"], columns="distribution", values="cell",
        aggfunc="first", sort=False,
    )  # fmt: skip
    order = [d for d in DISTRIBUTION_LABELS if d in wide.columns]
    order += sorted(set(wide.columns) - set(order))
    wide = wide.reindex(columns=order).fillna("-")
    wide.columns = [DISTRIBUTION_LABELS.get(c, c) for c in wide.columns]
    wide = wide.reset_index().rename(columns={"dim": "d"})
    if len(sgd):
        wide["SGD"] = wide["model-data"].map(sgd).fillna("-")
    return wide


def _intrinsic_table(table: pd.DataFrame) -> pd.DataFrame:
    from rbd.report.intrinsic import wide_intrinsic_table

    return wide_intrinsic_table(table)


# The wide-table builders a kind names (rbd.report.kinds.Kind.table).
WIDE_TABLES = {
    "method": _method_table,
    "distribution": _distribution_table,
    "compression": _compression_table,
    "bases": _bases_table,
    "intrinsic": _intrinsic_table,
}


def table_caption(experiment: str, kind: str, description: str | None = None) -> str:
    """The table's caption: what was run (one line: it is user text), then what a cell holds."""
    return " ".join(f"{description or experiment}. {kind_of(kind).caption}".split())


def render(
    table: pd.DataFrame,
    experiment: str,
    *,
    kind: str = "method_table",
    description: str | None = None,
    pdf=None,
    md=None,
    tex=None,
) -> None:
    """Write the table as a PDF page, a Markdown file and a LaTeX tabular."""
    from rbd.spec.io import write_text

    wide = wide_table(table, kind)
    text = table_caption(experiment, kind, description)
    # User text is escaped where it lands in markup.
    if md is not None:
        write_text(md, f"# {experiment}\n\n{markdown_escape(text)}\n\n{markdown(wide)}\n")
    if tex is not None:
        body = wide.replace("\n", "; ", regex=True).to_latex(index=False, escape=True)
        write_text(tex, f"% {experiment}: {text}\n{body}")
    if pdf is not None:
        save_pdf(_table_figure(wide, text), pdf)


def table_figure(
    table: pd.DataFrame,
    experiment: str,
    *,
    kind: str = "method_table",
    description: str | None = None,
) -> Figure:
    """The table drawn as a page (the PDF that `render` writes), returned, not saved."""
    return _table_figure(wide_table(table, kind), table_caption(experiment, kind, description))


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~])")


def markdown_escape(text: str) -> str:
    """Text shown as itself in Markdown (and in the HTML made from it): emphasis, code,
    links, inline HTML, table pipes and headings backslash-escaped, and a leading list
    marker too (parentheses are inert once brackets are escaped)."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return "\\" + escaped if escaped[:1] in ("+", "-") else escaped


_RST_SPECIAL = re.compile(r"([\\`*_|<>\[\]:])")


def rst_escape(text: str) -> str:
    """Text shown as itself in reStructuredText (the workflow report's captions): one
    line, every inline-markup character backslash-escaped."""
    return _RST_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def markdown(wide: pd.DataFrame) -> str:
    header = "| " + " | ".join(wide.columns) + " |"
    rule = "|" + "|".join("---" for _ in wide.columns) + "|"
    lines = [header, rule]
    for row in wide.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("\n", "<br>") for v in row) + " |")
    return "\n".join(lines)


@styled
def _table_figure(wide: pd.DataFrame, caption: str) -> Figure:
    import textwrap

    n_lines = max((str(v).count("\n") + 1 for v in wide.values.ravel()), default=1)
    widths = [
        max(len(line) for text in [c, *wide[c].astype(str)] for line in str(text).split("\n"))
        for c in wide.columns
    ]
    width = max(6.0, 0.085 * sum(widths) + 0.6)
    fig, ax = new_figure(figsize=(width, 1.4 + 0.24 * n_lines * (len(wide) + 1)), squeeze=True)
    ax.axis("off")
    cells = ax.table(
        cellText=wide.values.tolist(),
        colLabels=list(wide.columns),
        colWidths=[w / sum(widths) for w in widths],
        loc="center",
        cellLoc="center",
    )
    cells.auto_set_font_size(False)
    cells.set_fontsize(8.5)
    cells.scale(1.0, 1.1 * n_lines + 0.6)
    for (r, _), cell in cells.get_celld().items():
        cell.set_edgecolor("#bbbbbb")
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")
    ax.set_title("\n".join(textwrap.wrap(caption, int(width * 13))), fontsize=8.5)
    return fig


def experiment_table(paths, experiment: str, kind: str) -> pd.DataFrame:
    """The tidy CSV of an experiment: aggregated over seeds for tables and for
    `bases` (its figure and table show means); one row per run and epoch for
    curves, switches and scaling (with the timing and byte columns); one row per
    run for dims and sweeps (the figures draw the mean and the band over seeds
    themselves)."""
    tidy = kind_of(kind).tidy
    if tidy == "intrinsic":
        from rbd.report.intrinsic import intrinsic_runs

        return intrinsic_runs(paths, experiment)
    if tidy == "aggregate":
        return aggregate(load_runs(paths), experiment)
    if tidy == "scaling":
        data = load_curves(paths, SCALING_COLUMNS)
    elif tidy == "curves":
        data = load_curves(paths)
    else:
        data = load_runs(paths)
    data.insert(0, "experiment", experiment)
    return data
