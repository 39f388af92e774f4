"""Every experiment kind in one registry: how its runs become the tidy table, whether it has
a paper-like table (Markdown and LaTeX beside the figure), how its figure is drawn, the
caption of its table, its output files, and whether the default target builds it.

The CLI (`rbd aggregate`, `render`, `plot`), the tables, the figures and the workflow's
rules read this: a new kind is one entry here plus its table builder or figure drawer.
"""

from __future__ import annotations

from dataclasses import dataclass

# How runs become an experiment's tidy CSV (rbd.report.tables.experiment_table).
TIDY_FORMS = ("aggregate", "runs", "curves", "scaling", "intrinsic")


@dataclass(frozen=True)
class Kind:
    """How an experiment of this kind is shown.

    tidy: one of TIDY_FORMS: means over seeds ("aggregate"), one row per run ("runs"), per
        run and epoch ("curves"; "scaling" adds the distributed timing columns), one row
        per run with its baseline and fraction of it ("intrinsic", rbd.report.intrinsic).
    table: the wide table's builder (rbd.report.tables.WIDE_TABLES), or None: no
        Markdown/LaTeX table.
    figure: the drawer of figures/X.pdf (rbd.report.plots.DRAWERS); "table" draws the
        wide table as a page.
    caption: what a table cell holds (kinds with a table).
    opt_in: left out of the default target (a sweep, not a result).
    requires: methods an experiment of this kind must include (its config is refused
        without them).
    best_rates: also picks the best learning rates (results/tables/X_best.yaml).
    """

    tidy: str
    table: str | None
    figure: str
    caption: str | None = None
    opt_in: bool = False
    best_rates: bool = False
    requires: tuple[str, ...] = ()


KINDS = {
    "method_table": Kind(
        "aggregate", "method", "table",
        "validation accuracy (%) after the last epoch, mean ± std over seeds (fraction of "
        "the SGD accuracy); 'paper' is the paper's value on the full data set (Table 1, d = "
        "250, 100 epochs) where it has one.",
    ),
    "distribution_table": Kind(
        "aggregate", "distribution", "table",
        "RBD validation accuracy (%) per direction distribution, mean ± std over seeds "
        "(fraction of SGD); 'paper' is the paper's Table 1 value (Gaussian only).",
    ),
    "compression_table": Kind(
        "aggregate", "compression", "table",
        "validation accuracy (%) per compression factor D / sum d_k, mean ± std over seeds "
        "(fraction of SGD) and the gradient correlation of the last epoch (corr: the mean "
        "over parameter tensors of the cosine between update and gradient, the authors' "
        "statistic); SGD trains all D parameters.",
    ),
    "curves": Kind("curves", None, "curves"),
    "dims": Kind("runs", None, "dims"),
    "switch": Kind("curves", None, "switch"),
    "lr_sweep": Kind("runs", None, "lr_sweep", opt_in=True, best_rates=True),
    "scaling": Kind("scaling", None, "scaling"),
    "bases": Kind(
        "aggregate", "bases", "bases",
        "RBD validation accuracy (%) per direction distribution and d, mean ± std over seeds "
        "(fraction of SGD), and the training time per step (median over epochs, mean over "
        "seeds; in brackets the ratio to SGD's step on the same model and data).",
    ),
    "intrinsic_dim": Kind(
        "intrinsic", "intrinsic", "intrinsic_dim",
        "d_int90: the smallest d at which the mean validation accuracy over seeds reaches 90 "
        "% of the baseline's (the same network trained directly), interpolated in log d "
        "between grid points; in brackets the bootstrap 95 % interval over seeds (one seed: "
        "the grid points around it); '90 % absolute': the d at 90 % accuracy, the reading of "
        "Li et al.'s notebook; 'Li et al.': their published d_int90 (FPD).",
        requires=("sgd",),
    ),
}  # fmt: skip

# Kinds whose Markdown and LaTeX table `rbd render` writes.
TABLE_KINDS = tuple(name for name, kind in KINDS.items() if kind.table is not None)


def kind_of(name: str) -> Kind:
    """The registered kind ``name``; a ValueError lists the kinds."""
    if name not in KINDS:
        raise ValueError(f"unknown experiment kind {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]


def outputs(experiment: str, kind: str) -> list[str]:
    """The files an experiment of ``kind`` makes: its tidy CSV and figure, its table as
    Markdown and LaTeX where it has one, the best rates of a sweep."""
    entry = kind_of(kind)
    files = [f"figures/{experiment}.pdf", f"results/tables/{experiment}.csv"]
    if entry.table is not None:
        files += [f"figures/{experiment}.md", f"figures/{experiment}.tex"]
    if entry.best_rates:
        files.append(f"results/tables/{experiment}_best.yaml")
    return files
