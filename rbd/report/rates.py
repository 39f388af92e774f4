"""Learning rates picked from a sweep (the lr_sweep experiment), as config YAML to paste."""

from __future__ import annotations

import math

import pandas as pd

from rbd.report.style import METHOD_ORDER
from rbd.report.tables import DIVERGED


def best_learning_rates(runs: pd.DataFrame) -> dict[str, dict[str, float]]:
    """method -> "model-dataset" -> the rate with the highest mean validation accuracy.

    The mean is over finished seeds; a rate at which any seed diverged is not
    eligible (it would not be a safe default). Ties go to the smaller rate.
    """
    best: dict[str, dict[str, float]] = {}
    keys = ["method", "model", "dataset", "lr"]
    stats = runs.groupby(keys).agg(
        acc=("val_acc", "mean"), diverged=("status", lambda s: bool((s == DIVERGED).any()))
    )
    stats = stats[~stats["diverged"] & stats["acc"].notna()].reset_index()
    for (method, model, dataset), group in stats.groupby(["method", "model", "dataset"]):
        group = group.sort_values(["acc", "lr"], ascending=[False, True])
        best.setdefault(method, {})[f"{model}-{dataset}"] = float(group["lr"].iloc[0])
    return {m: best[m] for m in METHOD_ORDER if m in best}


def _rate_text(lr: float) -> str:
    k = math.log2(lr)
    return f"2^{int(k)}" if k == int(k) else repr(lr)


def lr_snippet(best: dict[str, dict[str, float]], note: str = "") -> str:
    """`learning_rates:` YAML, one flow mapping per method, ready to paste into a config."""
    lines = [f"# {line}" for line in note.splitlines()]
    lines.append("learning_rates:")
    for method, rates in best.items():
        cells = ", ".join(f"{pair}: {_rate_text(lr)}" for pair, lr in sorted(rates.items()))
        lines.append(f"  {method}: {{{cells}}}")
    return "\n".join(lines) + "\n"
