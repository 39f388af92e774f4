"""Names and looks shared by tables and figures: labels in the paper's words and
order, method colours, and the figures' style (imported by `rbd.report.tables` and
`rbd.report.plots`, which do not import each other's internals).

Figures are plain `matplotlib.figure.Figure` objects, not pyplot's: drawing one
needs no backend, so nothing here switches the backend of a notebook or a GUI
session, and the project's seaborn style applies only while a figure is drawn
and saved (`styled`, `save_pdf`), never to the caller's own plots.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

from rbd.spec import DATASET_FACTS, DATASETS, MODELS

METHOD_ORDER = ["nes", "fpd", "rbd", "sgd"]
METHOD_LABELS = {"nes": "NES", "fpd": "FPD", "rbd": "RBD", "sgd": "SGD"}
DISTRIBUTION_LABELS = {
    "gaussian": "Gaussian",
    "uniform": "Uniform",
    "rademacher": "Rademacher",
    "bernoulli-official": "Bernoulli (authors')",
    "srht": "SRHT",
    "fastfood": "Fastfood",
}
# Rows in the paper's order: models, then data sets, as Table 1 lists them (rbd.spec's).
MODEL_ORDER = list(MODELS)
DATASET_ORDER = list(DATASETS)
DATASET_LABELS = {name: facts.label for name, facts in DATASET_FACTS.items()}
METHOD_COLORS = {"sgd": "#222222", "rbd": "#d1495b", "fpd": "#00798c", "nes": "#edae49"}


def pair_label(model: str, dataset: str) -> str:
    """ "FC-MNIST", as the paper names a model-data pair."""
    return f"{model.upper()}-{DATASET_LABELS.get(dataset, dataset)}"


def _style_rc() -> dict:
    """The rcParams of seaborn's paper context and white grid, as one dict."""
    import seaborn as sns
    from cycler import cycler

    rc = dict(sns.axes_style("whitegrid")) | dict(sns.plotting_context("paper", font_scale=1.1))
    rc |= {"font.family": "sans-serif", "axes.prop_cycle": cycler(color=sns.color_palette("deep"))}
    return rc | {"pdf.fonttype": 42, "figure.dpi": 100, "legend.frameon": False}


@contextmanager
def figure_style():
    """The project's look for what is drawn or saved inside; the caller's rcParams after."""
    import matplotlib

    with matplotlib.rc_context(_style_rc()):
        yield


def styled(draw):
    """Decorate a drawing function so that it draws in `figure_style`."""

    @functools.wraps(draw)
    def in_style(*args, **kwargs):
        with figure_style():
            return draw(*args, **kwargs)

    return in_style


def new_figure(
    n_rows: int = 1, n_cols: int = 1, *, figsize=None, squeeze: bool = False, **subplots
):
    """`(Figure, axes)` like `pyplot.subplots`, outside pyplot's figure registry."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(n_rows, n_cols, squeeze=squeeze, **subplots)


def save_figure(fig, path, *, dpi: float | None = None) -> None:
    """Save `fig` atomically (a killed job leaves no half file), in the project's style;
    the format from the suffix (.pdf, .png, .svg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    with figure_style():
        fig.savefig(tmp, format=path.suffix[1:].lower(), bbox_inches="tight", dpi=dpi or "figure")
    tmp.replace(path)


def save_pdf(fig, path) -> None:
    """Save `fig` as a PDF atomically, in the project's style (`save_figure`)."""
    save_figure(fig, path)
