"""Names and looks shared by tables and figures: labels in the paper's words and
order, method colours, and matplotlib set up for files (imported by `rbd.tables`
and `rbd.plots`, which do not import each other's internals)."""

from __future__ import annotations

from pathlib import Path

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
# Rows in the paper's order: models, then data sets, as Table 1 lists them.
MODEL_ORDER = ["fc", "cnn", "resnet8"]
DATASET_ORDER = ["mnist5k", "mnist", "fashion_mnist", "cifar10"]
DATASET_LABELS = {
    "mnist5k": "MNIST5k",
    "mnist": "MNIST",
    "fashion_mnist": "FMNIST",
    "cifar10": "CIFAR10",
}
METHOD_COLORS = {"sgd": "#222222", "rbd": "#d1495b", "fpd": "#00798c", "nes": "#edae49"}
_STYLE_SET = False


def pair_label(model: str, dataset: str) -> str:
    """ "FC-MNIST", as the paper names a model-data pair."""
    return f"{model.upper()}-{DATASET_LABELS.get(dataset, dataset)}"


def pyplot():
    """matplotlib.pyplot on the non-interactive backend, with the project's style applied."""
    global _STYLE_SET
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not _STYLE_SET:
        import seaborn as sns

        sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
        plt.rcParams.update({"pdf.fonttype": 42, "figure.dpi": 100, "legend.frameon": False})
        _STYLE_SET = True
    return plt


def save_pdf(fig, path) -> None:
    """Save `fig` as a PDF atomically (a killed job leaves no half file) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.pdf")
    fig.savefig(tmp, bbox_inches="tight")
    pyplot().close(fig)
    tmp.replace(path)
