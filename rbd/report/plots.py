"""The paper's figures from tidy run tables, in one seaborn style.

Each `plot_*` function returns its `matplotlib.figure.Figure` and saves
nothing (`rbd.report.style.save_pdf`, or the `rbd plot` command, writes the PDF), so
they work in a notebook as they do in the workflow.

Every figure shows the mean over seeds as a line and one standard deviation as
a band (seaborn's ``errorbar="sd"``). Diverged runs are drawn, not dropped: a
cross at the bottom of the panel, and a count in the legend. The learning-rate
sweep also yields the best rate per method and pair (`best_learning_rates`),
written as a `learning_rates` YAML snippet (`lr_snippet`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rbd.report.kinds import kind_of
from rbd.report.paper import off_bound
from rbd.report.rates import best_learning_rates
from rbd.report.style import (
    DATASET_LABELS,
    DISTRIBUTION_LABELS,
    METHOD_COLORS,
    METHOD_LABELS,
    METHOD_ORDER,
    new_figure,
    pair_label,
    styled,
)
from rbd.report.tables import DIVERGED, paper_order


def _pairs(data: pd.DataFrame) -> list[tuple[str, str]]:
    """The model-data pairs of `data`, in the paper's order."""
    pairs = data[["model", "dataset"]].drop_duplicates()
    pairs = pairs.sort_values(["model", "dataset"], key=paper_order, kind="stable")
    return list(pairs.itertuples(index=False, name=None))


def _panels(n_rows: int, n_cols: int, *, width=4.2, height=3.2):
    return new_figure(n_rows, n_cols, figsize=(width * n_cols, height * n_rows))


def _title(fig, text: str | None) -> None:
    if text:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(text, 110)), fontsize=9, y=1.0, va="bottom")


def _diverged_label(label: str, runs: pd.DataFrame) -> str:
    per_run = runs.drop_duplicates("run_dir") if "run_dir" in runs else runs
    n, bad = len(per_run), int((per_run["status"] == DIVERGED).sum())
    return f"{label} ({bad}/{n} diverged)" if bad else label


def _mark_diverged(ax, x: pd.Series, color) -> None:
    """Crosses on the bottom edge of the panel at the x positions of diverged runs."""
    if len(x):
        ax.scatter(
            x,
            np.zeros(len(x)),
            marker="x",
            color=color,
            s=40,
            clip_on=False,
            transform=ax.get_xaxis_transform(),
            zorder=5,
        )


def _line(ax, data: pd.DataFrame, x: str, y: str, label: str, color, **kwargs) -> None:
    import seaborn as sns

    if data[y].notna().any():
        sns.lineplot(data=data, x=x, y=y, ax=ax, label=label, color=color, errorbar="sd", **kwargs)


@styled
def plot_curves(curves: pd.DataFrame, title: str | None = None) -> Figure:
    """Validation accuracy per epoch, one panel per model-data pair, one line per method."""
    pairs = _pairs(curves)
    fig, axes = _panels(1, len(pairs))
    for ax, (model, dataset) in zip(axes[0], pairs, strict=True):
        sub = curves[(curves["model"] == model) & (curves["dataset"] == dataset)]
        for method in [m for m in METHOD_ORDER if m in set(sub["method"])]:
            runs = sub[sub["method"] == method]
            label = _diverged_label(METHOD_LABELS[method], runs)
            _line(ax, runs, "epoch", "val_acc", label, METHOD_COLORS[method], marker="o")
        ax.set(title=pair_label(model, dataset), xlabel="epoch", ylabel="validation accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    _title(fig, title)
    return fig


def _switch_label(switch: str, method: str) -> str:
    if method == "sgd":
        return "SGD throughout"
    if switch == "none":
        return f"{METHOD_LABELS[method]} throughout"
    kind, _, k = switch.partition(":")
    other = METHOD_LABELS[method]
    return f"SGD → {other} at epoch {k}" if kind == "sgd_first" else f"{other} → SGD at epoch {k}"


@styled
def plot_switch(curves: pd.DataFrame, title: str | None = None) -> Figure:
    """Curves of runs that switch between SGD and a subspace method, beside the pure runs.

    One row per model-data pair: left SGD first, right SGD last, each with the
    pure runs for reference and a dotted line at each switch epoch.
    """
    import seaborn as sns

    pairs = _pairs(curves)
    fig, axes = _panels(len(pairs), 2)
    for row, (model, dataset) in zip(axes, pairs, strict=True):
        sub = curves[(curves["model"] == model) & (curves["dataset"] == dataset)]
        pure = sub[sub["switch"] == "none"]
        for ax, kind in zip(row, ("sgd_first", "sgd_last"), strict=True):
            switched = sub[sub["switch"].str.startswith(kind)]
            epochs = sorted({int(s.partition(":")[2]) for s in switched["switch"]})
            colors = sns.color_palette("viridis", max(len(epochs), 1))
            for (switch, method), runs in pure.groupby(["switch", "method"], sort=False):
                label = _diverged_label(_switch_label(switch, method), runs)
                _line(ax, runs, "epoch", "val_acc", label, METHOD_COLORS[method], linestyle="--")
            for color, k in zip(colors, epochs, strict=False):
                runs = switched[switched["switch"] == f"{kind}:{k}"]
                for method, group in runs.groupby("method"):
                    label = _diverged_label(_switch_label(f"{kind}:{k}", method), group)
                    _line(ax, group, "epoch", "val_acc", label, color, marker="o")
                ax.axvline(k + 0.5, color=color, linestyle=":", linewidth=1)
            ax.set(
                title=f"{pair_label(model, dataset)}: SGD {kind.partition('_')[2]}",
                xlabel="epoch",
                ylabel="validation accuracy (%)",
            )
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=7)
    _title(fig, title)
    return fig


def expected_grad_corr(dim: float, num_params: float) -> float:
    """sqrt(d / (D + d + 1)): the expected cosine of RBD's update with the gradient (Gaussian)."""
    return math.sqrt(dim / (num_params + dim + 1))


@styled
def plot_dims(runs: pd.DataFrame, title: str | None = None) -> Figure:
    """Final accuracy and gradient correlation against d (log scale), per method, per pair.

    SGD is drawn as a horizontal reference on the accuracy panel. The correlation panel
    shows the global cosine (solid; its Gaussian expectation sqrt(d / (D + d + 1)) dotted)
    and the mean of the per-tensor cosines, the authors' statistic (dashed).
    """
    pairs = _pairs(runs)
    fig, axes = _panels(len(pairs), 2)
    for row, (model, dataset) in zip(axes, pairs, strict=True):
        sub = runs[(runs["model"] == model) & (runs["dataset"] == dataset)]
        sgd = sub[sub["method"] == "sgd"]
        subspace = sub[sub["method"] != "sgd"]
        for method in [m for m in METHOD_ORDER if m in set(subspace["method"])]:
            group = subspace[subspace["method"] == method]
            color, label = METHOD_COLORS[method], _diverged_label(METHOD_LABELS[method], group)
            _line(row[0], group, "dim", "val_acc", label, color, marker="o")
            name = METHOD_LABELS[method]
            _line(row[1], group, "dim", "grad_corr_mean", f"{name}, global", color, marker="o")
            if "grad_corr_tensors_mean" in group:
                _line(
                    row[1],
                    group,
                    "dim",
                    "grad_corr_tensors_mean",
                    f"{name}, mean per tensor",
                    color,
                    marker="s",
                    linestyle="--",
                )
            _mark_diverged(row[0], group.loc[group["status"] == DIVERGED, "dim"], color)
        if sgd["val_acc"].notna().any():
            mean = sgd["val_acc"].mean()
            row[0].axhline(
                mean, color=METHOD_COLORS["sgd"], linestyle="--", label=f"SGD ({mean:.1f})"
            )
        dims = np.geomspace(max(subspace["dim"].min(), 1), max(subspace["dim"].max(), 2), 50)
        num_params = float(sub["num_params"].iloc[0])
        row[1].plot(
            dims,
            [expected_grad_corr(d, num_params) for d in dims],
            color="#777777",
            linestyle=":",
            label=r"$\sqrt{d/(D+d+1)}$",
        )
        pair = pair_label(model, dataset)
        row[0].set(
            xscale="log", title=pair, xlabel="d (directions)", ylabel="validation accuracy (%)"
        )
        row[1].set(
            xscale="log",
            title=pair,
            xlabel="d (directions)",
            ylabel="gradient correlation (cosine, last epoch)",
        )
        for ax in row:
            ax.legend(fontsize=8)
    _title(fig, title)
    return fig


@styled
def plot_lr(runs: pd.DataFrame, title: str | None = None) -> Figure:
    """Final validation accuracy against the learning rate (log2), per method, per pair.

    The best rate of each method (`best_learning_rates`) is ringed; diverged runs are crosses.
    """
    pairs = _pairs(runs)
    best = best_learning_rates(runs)
    fig, axes = _panels(1, len(pairs))
    for ax, (model, dataset) in zip(axes[0], pairs, strict=True):
        sub = runs[(runs["model"] == model) & (runs["dataset"] == dataset)].copy()
        sub["log2_lr"] = np.log2(sub["lr"].astype(float))
        for method in [m for m in METHOD_ORDER if m in set(sub["method"])]:
            group = sub[sub["method"] == method]
            color = METHOD_COLORS[method]
            _line(ax, group, "log2_lr", "val_acc", _diverged_label(METHOD_LABELS[method], group),
                  color, marker="o")  # fmt: skip
            _mark_diverged(ax, group.loc[group["status"] == DIVERGED, "log2_lr"], color)
            lr = best.get(method, {}).get(f"{model}-{dataset}")
            if lr is not None:
                acc = group.loc[group["lr"] == lr, "val_acc"].mean()
                ax.scatter([math.log2(lr)], [acc], s=160, facecolors="none", edgecolors=color)
        ax.set_xlim(sub["log2_lr"].min() - 0.4, sub["log2_lr"].max() + 0.4)
        ax.set(
            title=pair_label(model, dataset),
            xlabel=r"$\log_2$ learning rate",
            ylabel="validation accuracy (%)",
        )
        ax.legend(fontsize=8)
    _title(fig, title)
    return fig


SHARING_LABELS = {"worker": "own bases per worker", "shared": "shared bases", "split": "d split"}
TIME_PARTS = {"compute_s": "compute", "regen_s": "regenerate", "comm_s": "communicate"}


def scaling_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per sharing mode and W: mean over runs of each run's median per-epoch timings
    (seconds per step) and bytes per step, and the last epoch's accuracy."""
    from rbd.report.tables import SCALING_COLUMNS

    columns = [c for c in SCALING_COLUMNS if c in curves]
    per_run = curves.groupby(["sharing", "workers", "run_dir"])[columns].median()
    last = curves.sort_values("epoch").groupby(["sharing", "workers", "run_dir"])["val_acc"].last()
    per_run["val_acc"] = last
    summary = per_run.groupby(["sharing", "workers"]).mean().reset_index()
    return summary.sort_values(["sharing", "workers"], kind="stable").reset_index(drop=True)


@styled
def plot_scaling(curves: pd.DataFrame, title: str | None = None) -> Figure:
    """Distributed RBD against the number of workers W.

    Top: validation accuracy per epoch, one panel per sharing mode, one line per W.
    Bottom: time per step against W split into compute, regeneration and
    communication (stacked bars, one group per sharing mode), and bytes per step
    against W beside the D x 4 bytes of a data-parallel SGD all-reduce.
    """
    import seaborn as sns

    modes = [b for b in SHARING_LABELS if b in set(curves["sharing"])]
    workers = sorted({int(w) for w in curves["workers"]})
    colors = dict(zip(workers, sns.color_palette("viridis", len(workers)), strict=True))
    fig, axes = _panels(2, max(len(modes), 2))
    for ax, mode in zip(axes[0], modes, strict=False):
        sub = curves[curves["sharing"] == mode]
        for w in workers:
            runs = sub[sub["workers"] == w]
            label = _diverged_label(f"W = {w}", runs)
            _line(ax, runs, "epoch", "val_acc", label, colors[w], marker="o")
        pairs = ", ".join(pair_label(m, d) for m, d in _pairs(sub))
        ax.set(title=f"{pairs}: {SHARING_LABELS[mode]}", xlabel="epoch",
               ylabel="validation accuracy (%)")  # fmt: skip
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    for ax in axes[0][len(modes) :]:
        ax.axis("off")
    summary = scaling_summary(curves)
    time_ax, bytes_ax = axes[1][0], axes[1][1]
    width = 0.8 / max(len(modes), 1)
    hatches = ["", "//", "..", "xx"]
    part_colors = sns.color_palette("Set2", len(TIME_PARTS))
    for i, mode in enumerate(modes):
        rows = summary[summary["sharing"] == mode]
        offset = (i - (len(modes) - 1) / 2) * width
        x = np.array([workers.index(int(w)) for w in rows["workers"]]) + offset
        bottom = np.zeros(len(rows))
        for color, (column, part) in zip(part_colors, TIME_PARTS.items(), strict=True):
            if column not in rows:
                continue
            ms = 1000 * rows[column].fillna(0).to_numpy()
            time_ax.bar(x, ms, width, bottom=bottom, color=color, hatch=hatches[i % len(hatches)],
                        edgecolor="white", label=f"{part} ({SHARING_LABELS[mode]})")  # fmt: skip
            bottom += ms
        if "bytes_per_step" in rows:
            bytes_ax.plot(rows["workers"], rows["bytes_per_step"], marker="o",
                          label=f"RBD, {SHARING_LABELS[mode]}")  # fmt: skip
    time_ax.set_xticks(range(len(workers)), [str(w) for w in workers])
    time_ax.set(xlabel="workers W", ylabel="time per step (ms, median over epochs)",
                title="time per step: compute, regeneration, communication")  # fmt: skip
    time_ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0, -0.18), ncol=2)
    if "sgd_bytes_per_step" in summary and summary["sgd_bytes_per_step"].notna().any():
        sgd = summary.groupby("workers")["sgd_bytes_per_step"].mean()
        bytes_ax.plot(sgd.index, sgd.values, color=METHOD_COLORS["sgd"], linestyle="--",
                      label="SGD all-reduce (D x 4)")  # fmt: skip
    bytes_ax.set(xscale="log", yscale="log", xlabel="workers W", ylabel="bytes per step",
                 title="bytes exchanged per step")  # fmt: skip
    bytes_ax.set_xticks(workers, [str(w) for w in workers])
    bytes_ax.minorticks_off()
    bytes_ax.legend(fontsize=7)
    for ax in axes[1][2:]:
        ax.axis("off")
    fig.tight_layout()
    _title(fig, title)
    return fig


@styled
def plot_bases(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Accuracy and time per step against d, one line per direction distribution.

    From the aggregated table (`rbd.report.tables.aggregate`): one column of panels per
    model-data pair; top, validation accuracy (mean, bar: std over seeds) with
    SGD as a dashed line; bottom, milliseconds per step (log scale) with SGD's.
    """
    import seaborn as sns

    pairs = _pairs(table)
    dists = [d for d in DISTRIBUTION_LABELS if d in set(table["distribution"])]
    colors = dict(zip(dists, sns.color_palette("colorblind", len(dists)), strict=True))
    fig, axes = _panels(2, len(pairs))
    for col, (model, dataset) in enumerate(pairs):
        acc_ax, time_ax = axes[0][col], axes[1][col]
        sub = table[(table["model"] == model) & (table["dataset"] == dataset)]
        for dist in dists:
            rows = sub[(sub["method"] != "sgd") & (sub["distribution"] == dist)].sort_values("dim")
            if not len(rows):
                continue
            bad = int(rows["n_diverged"].sum())
            label = DISTRIBUTION_LABELS[dist] + (f" ({bad} diverged)" if bad else "")
            acc_ax.errorbar(rows["dim"], rows["val_acc_mean"], yerr=rows["val_acc_std"],
                            marker="o", capsize=3, color=colors[dist], label=label)  # fmt: skip
            time_ax.plot(rows["dim"], 1000 * rows["step_s_mean"], marker="o",
                         color=colors[dist], label=DISTRIBUTION_LABELS[dist])  # fmt: skip
        sgd = sub[sub["method"] == "sgd"]
        if len(sgd) and sgd["val_acc_mean"].notna().any():
            acc = sgd["val_acc_mean"].mean()
            acc_ax.axhline(acc, color=METHOD_COLORS["sgd"], linestyle="--",
                           label=f"SGD ({acc:.1f})")  # fmt: skip
        if len(sgd) and sgd["step_s_mean"].notna().any():
            ms = 1000 * sgd["step_s_mean"].mean()
            time_ax.axhline(ms, color=METHOD_COLORS["sgd"], linestyle="--",
                            label=f"SGD ({ms:.2f} ms)")  # fmt: skip
        pair = pair_label(model, dataset)
        acc_ax.set(xscale="log", title=pair, xlabel="d (directions)",
                   ylabel="validation accuracy (%)")  # fmt: skip
        time_ax.set(xscale="log", yscale="log", title=pair, xlabel="d (directions)",
                    ylabel="time per step (ms)")  # fmt: skip
        dims = sorted({int(d) for d in sub.loc[sub["method"] != "sgd", "dim"]})
        for ax in (acc_ax, time_ax):
            ax.set_xticks(dims, [str(d) for d in dims])
            ax.minorticks_off()
            ax.legend(fontsize=7)
    fig.tight_layout()
    _title(fig, title)
    return fig


PAPER_COLOR = "#222222"
OURS_COLOR = "#1f6fb4"
OFF_COLOR = "#c0392b"
OFF_SHADE = "#f6d5d1"
# gid of the band behind a cell of ours outside the bound (tests find it by this name).
OFF_GID = "off-bound"
ROW_OFFSET = 0.15
TABLE_COLUMN_LABELS = METHOD_LABELS | DISTRIBUTION_LABELS | {"sgd": "SGD"}


def _cell_text(cell) -> str:
    """What a row says beside the plot: ours (seeds, epochs), the paper's, the difference."""
    if pd.isna(cell.n_seeds):
        ours = "ours: not run"
    elif pd.isna(cell.ours):
        ours = f"ours: diverged ({int(cell.n_diverged)} of {int(cell.n_diverged)} seeds)"
    else:
        n = int(cell.n_seeds)
        ours = f"ours {cell.ours:.2f}"
        if not pd.isna(cell.ours_std):
            ours += f" ± {cell.ours_std:.2f}"
        runs = [f"{n} seed{'s' if n != 1 else ''}"]
        if not pd.isna(cell.epochs):
            planned = int(cell.epochs_planned) if not pd.isna(cell.epochs_planned) else None
            done = cell.status == "done" or planned is None or int(cell.epochs) >= planned
            runs.append(f"{int(cell.epochs)} epochs" if done else
                        f"epoch {int(cell.epochs)} of {planned}")  # fmt: skip
        if not pd.isna(cell.n_diverged) and cell.n_diverged:
            runs.append(f"{int(cell.n_diverged)} diverged")
        if cell.table1_run:
            runs.append("Table 1's runs")
        ours += f" ({', '.join(runs)})"
    if pd.isna(cell.paper):
        return f"{ours};  paper: no number"
    text = f"{ours};  paper {cell.paper:g} ± {cell.paper_std:g}"
    if not pd.isna(cell.diff):
        text += f";  {cell.diff:+.2f}"
        if cell.off:
            text += f", outside ±{off_bound(cell.paper_std):g}"
    return text


@styled
def plot_paper_vs_ours(cells: pd.DataFrame, title: str | None = None) -> Figure:
    """The paper's mean ± std beside ours for every cell of
    `rbd.report.comparison.comparison_cells`.

    One panel per table and model, one row per cell (data set, then method or
    distribution, in the paper's order): the paper as an open diamond with its
    std, ours as a dot with the std over our seeds; beside each row the numbers,
    our seeds and epochs ("epoch N of 100" for a run not finished). A cell of
    ours outside the bound (more than 2 paper std or 1.5 points off, whichever
    is larger) has a shaded band behind its row, its label in red.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    panels = list(dict.fromkeys(zip(cells["table"], cells["model"], strict=True)))
    heights = [int(((cells["table"] == t) & (cells["model"] == m)).sum()) + 2 for t, m in panels]
    fig, axes = new_figure(max(len(panels), 1), 1, figsize=(11, 0.24 * sum(heights or [4]) + 1),
                           gridspec_kw={"height_ratios": heights or [1]})  # fmt: skip
    if not panels:
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, "no cell of ours has a paper counterpart", ha="center")
    for ax, (table, model) in zip(axes[: len(panels), 0], panels, strict=True):
        sub = cells[(cells["table"] == table) & (cells["model"] == model)].reset_index(drop=True)
        # One row per cell, a gap between data sets, the first cell at the top.
        gaps = 0.6 * sub["dataset"].ne(sub["dataset"].shift()).cumsum().to_numpy()
        y = -(sub.index.to_numpy() + gaps)
        beside = blended_transform_factory(ax.transAxes, ax.transData)
        for yi, cell in zip(y, sub.itertuples(), strict=True):
            if cell.off:
                ax.axhspan(yi - 0.45, yi + 0.45, color=OFF_SHADE, zorder=0, gid=OFF_GID)
            ax.text(1.02, yi, _cell_text(cell), transform=beside, va="center", fontsize=7,
                    color=OFF_COLOR if cell.off else PAPER_COLOR)  # fmt: skip
        # The paper a little above its row, ours a little below: equal values stay visible.
        paper, ours = sub["paper"].notna().to_numpy(), sub["ours"].notna().to_numpy()
        ax.errorbar(sub.loc[paper, "paper"], y[paper] + ROW_OFFSET,
                    xerr=sub.loc[paper, "paper_std"], fmt="D", ms=5, mfc="white",
                    mec=PAPER_COLOR, ecolor=PAPER_COLOR, capsize=3, label="paper")  # fmt: skip
        ax.errorbar(sub.loc[ours, "ours"], y[ours] - ROW_OFFSET,
                    xerr=sub.loc[ours, "ours_std"].fillna(0), fmt="o", ms=5, color=OURS_COLOR,
                    capsize=3, label="ours")  # fmt: skip
        labels = [f"{DATASET_LABELS.get(d, d)}  {TABLE_COLUMN_LABELS.get(c, c)}"
                  for d, c in zip(sub["dataset"], sub["column"], strict=True)]  # fmt: skip
        ax.set_yticks(y, labels)
        for tick, off in zip(ax.get_yticklabels(), sub["off"], strict=True):
            if off:
                tick.set_color(OFF_COLOR)
        ax.set_ylim(y.min() - 0.7, y.max() + 0.7)
        ax.grid(axis="y", visible=False)
        what = "method" if table == 1 else "direction distribution (RBD) and SGD"
        ax.set(title=f"Table {table}, {model.upper()}: per data set and {what}",
               xlabel="validation accuracy (%)")  # fmt: skip
    if panels:
        handles = [
            Line2D([], [], marker="D", mfc="white", mec=PAPER_COLOR, color=PAPER_COLOR,
                   label="paper: mean ± std (3 runs)"),
            Line2D([], [], marker="o", color=OURS_COLOR, label="ours: mean ± std over seeds"),
            Patch(color=OFF_SHADE, label="ours more than max(2 paper std, 1.5 points) off"),
        ]  # fmt: skip
        axes[0][0].legend(handles=handles, fontsize=7, loc="lower left", ncol=3,
                          bbox_to_anchor=(0, 1.08), frameon=False)  # fmt: skip
    fig.tight_layout()
    _title(fig, title)
    return fig


@styled
def plot_intrinsic_dim(runs: pd.DataFrame, title: str | None = None) -> Figure:
    """Accuracy against d (log axis), one panel per network, one line per method variant
    (mean over seeds, each seed a dot); the baseline and 90 % of it as horizontal lines;
    each variant's d_int90 as a dotted vertical line in its colour, and Li et al.'s
    published d_int90 as a dashed black one (rbd.report.intrinsic)."""
    import seaborn as sns

    from rbd.report.intrinsic import LI_D_INT90, THRESHOLD, VARIANT_KEYS, d_int90_table

    summary = d_int90_table(runs)
    sub = runs[runs["method"] != "sgd"]
    variants = list(sub[VARIANT_KEYS].drop_duplicates().itertuples(index=False, name=None))
    colors = dict(zip(variants, sns.color_palette("tab10", max(len(variants), 1)), strict=False))
    pairs = _pairs(runs)
    fig, axes = _panels(1, max(len(pairs), 1), width=5.0, height=3.8)
    for ax, (model, dataset) in zip(axes[0], pairs, strict=False):
        net = sub[(sub["model"] == model) & (sub["dataset"] == dataset)]
        baseline = runs[(runs["model"] == model) & (runs["dataset"] == dataset)]["baseline_acc"]
        for variant in variants:
            mask = np.all([net[k] == v for k, v in zip(VARIANT_KEYS, variant, strict=True)], 0)
            rows = net[mask]
            if rows.empty:
                continue
            method, distribution, rule = variant
            label = f"{METHOD_LABELS.get(method, method)}, "
            label += f"{DISTRIBUTION_LABELS.get(distribution, distribution)}, {rule}"
            mean = rows.groupby("dim")["final_val_acc"].mean()
            ax.plot(mean.index, mean.values, marker="o", color=colors[variant], label=label,
                    gid=f"mean:{method}:{distribution}:{rule}")  # fmt: skip
            ax.scatter(rows["dim"], rows["final_val_acc"], s=8, alpha=0.5, color=colors[variant])
            found = summary[
                (summary["model"] == model) & (summary["dataset"] == dataset)
                & np.all([summary[k] == v for k, v in zip(VARIANT_KEYS, variant, strict=True)], 0)
            ]  # fmt: skip
            if len(found) and np.isfinite(found["d_int90"].iloc[0]):
                ax.axvline(found["d_int90"].iloc[0], color=colors[variant], linestyle=":",
                           gid=f"d_int90:{method}:{distribution}:{rule}")  # fmt: skip
        if baseline.notna().any():
            base = float(baseline.dropna().iloc[0])
            ax.axhline(base, color=METHOD_COLORS["sgd"], linewidth=0.8, gid="baseline",
                       label=f"baseline (direct training) {base:.2f} %")  # fmt: skip
            ax.axhline(THRESHOLD * base, color="grey", linestyle="--", linewidth=0.8,
                       gid="threshold", label=f"{THRESHOLD:.0%} of the baseline")  # fmt: skip
        if (model, dataset) in LI_D_INT90:
            ax.axvline(LI_D_INT90[(model, dataset)], color="black", linestyle="--",
                       linewidth=0.9, gid="li",
                       label=f"Li et al.: d_int90 = {LI_D_INT90[(model, dataset)]}")  # fmt: skip
        ax.set_xscale("log")
        ax.set(title=pair_label(model, dataset), xlabel="subspace dimension d",
               ylabel="validation accuracy (%)")  # fmt: skip
        ax.legend(fontsize=6)
    fig.tight_layout()
    _title(fig, title)
    return fig


# The figure drawers a kind names (rbd.report.kinds.Kind.figure; "table" is the wide
# table drawn as a page, rbd.report.tables.table_figure).
DRAWERS = {
    "curves": plot_curves,
    "dims": plot_dims,
    "switch": plot_switch,
    "lr_sweep": plot_lr,
    "scaling": plot_scaling,
    "bases": plot_bases,
    "intrinsic_dim": plot_intrinsic_dim,
}


def plot(kind: str, data: pd.DataFrame, title: str | None = None) -> Figure:
    """The figure of an experiment of `kind`, drawn from its tidy table (not saved); a kind
    whose figure is its table is drawn by rbd.report.tables.table_figure instead."""
    drawer = kind_of(kind).figure
    if drawer not in DRAWERS:
        raise ValueError(f"experiment kind {kind!r} draws its table: use table_figure")
    return DRAWERS[drawer](data, title)
