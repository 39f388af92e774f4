"""The intrinsic dimension of an objective landscape (Li et al., ICLR 2018): the smallest
subspace dimension d at which training reaches 90 % of the network's full-space accuracy,
d_int90, for each method (FPD: Li et al.'s fixed subspace; RBD: re-drawn every step).

From an experiment's runs: one row per run (`intrinsic_runs`), with the baseline accuracy
(the experiment's SGD-method runs: the same network trained directly, as Li et al.'s
baseline) and the fraction of it each run reached; then d_int90 per method and network
(`d_int90_table`):

- the mean fraction over seeds at each d of the grid; d_int90 is where that curve first
  reaches 0.9, interpolated linearly in log d between the two grid points around the
  crossing (Li et al. take the grid point itself: `bracket_hi`);
- its uncertainty: with two or more seeds per d, the 2.5 and 97.5 percentiles of d_int90
  over `BOOTSTRAP` resamples of the seeds (drawn with replacement at each d, seeded);
  with one seed, the grid points around the crossing;
- beside it the reading of Li et al.'s own notebook (an absolute 90 % accuracy, not 90 %
  of the baseline: `d_int90_abs`), and Li et al.'s published value where there is one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rbd.spec import METRICS, RUN_JSON, RunDirectoryError

THRESHOLD = 0.9
BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
# Li et al. (2018), Table 1 / Section 3: d_int90 of their MNIST networks, found with FPD
# (their method) on the fixed random subspace. A reference drawn beside ours, never ours.
LI_D_INT90 = {("fc2x200", "mnist"): 750, ("lenet", "mnist"): 290}
# What tells two curves of one network apart.
VARIANT_KEYS = ["method", "distribution", "update_rule"]
NETWORK_KEYS = ["model", "dataset"]


def _run_row(run_dir: Path) -> dict:
    try:
        record = json.loads((run_dir / RUN_JSON).read_text())
        metrics = pd.read_csv(run_dir / METRICS)
    except (OSError, ValueError) as err:
        raise RunDirectoryError(f"{run_dir} cannot be read: {err}") from None
    cfg = record["config"]
    done = record["status"] == "done" and len(metrics)
    return {
        **{k: cfg.get(k) for k in ("method", "model", "dataset", "distribution", "dim", "seed")},
        "update_rule": cfg.get("update_rule", "sgd"),
        "lr": cfg["lr"],
        "epochs": cfg["epochs"],
        "status": record["status"],
        "epochs_completed": len(metrics),
        "num_params": record["num_params"],
        "final_val_acc": float(metrics["val_acc"].iloc[-1]) if done else np.nan,
        "best_val_acc": float(metrics["val_acc"].max()) if len(metrics) else np.nan,
        "test_acc": record.get("test_acc", np.nan),
        "run_dir": str(run_dir),
    }


def intrinsic_runs(paths, experiment: str) -> pd.DataFrame:
    """One row per run: its settings, final and best validation accuracy, test accuracy,
    the baseline accuracy of its network (mean final accuracy of the SGD-method runs) and
    the fraction of it reached (``fraction``; NaN without a baseline)."""
    rows = [_run_row(Path(p) if Path(p).is_dir() else Path(p).parent) for p in paths]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    baseline = (
        table[table["method"] == "sgd"]
        .groupby(NETWORK_KEYS)["final_val_acc"]
        .mean()
        .rename("baseline_acc")
    )
    table = table.join(baseline, on=NETWORK_KEYS)
    table["fraction"] = table["final_val_acc"] / table["baseline_acc"]
    table.insert(0, "experiment", experiment)
    return table.sort_values([*NETWORK_KEYS, *VARIANT_KEYS, "dim", "seed"], kind="stable")


def crossing(dims, values, threshold: float = THRESHOLD) -> tuple[float, float, float]:
    """(d at which ``values`` first reach ``threshold``, interpolated linearly in log d;
    the grid point below; the grid point at or above). ``dims`` ascending. Reached at the
    first point: (that d, nan, that d) and the d is an upper bound; never reached:
    (nan, last d, nan)."""
    dims, values = np.asarray(dims, dtype=float), np.asarray(values, dtype=float)
    above = np.flatnonzero(values >= threshold)
    if not len(above):
        return math.nan, float(dims[-1]), math.nan
    i = int(above[0])
    if i == 0:
        return float(dims[0]), math.nan, float(dims[0])
    d0, d1, v0, v1 = dims[i - 1], dims[i], values[i - 1], values[i]
    t = (threshold - v0) / (v1 - v0)
    return float(math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0)))), d0, d1


def _bootstrap(per_dim: list[tuple[float, np.ndarray]], rng) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the crossing over resamples of the seeds at each d."""
    dims = [d for d, _ in per_dim]
    draws = []
    for _ in range(BOOTSTRAP):
        means = [rng.choice(v, size=len(v), replace=True).mean() for _, v in per_dim]
        draws.append(crossing(dims, means)[0])
    draws = np.array(draws)
    if np.isnan(draws).mean() > 0.025:  # the threshold is not reached in too many resamples
        return float(np.nanpercentile(draws, 2.5)), math.nan
    return float(np.nanpercentile(draws, 2.5)), float(np.nanpercentile(draws, 97.5))


def d_int90_table(runs: pd.DataFrame) -> pd.DataFrame:
    """d_int90 per method variant and network, with its uncertainty (module docstring)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    rows = []
    sub = runs[(runs["method"] != "sgd") & runs["fraction"].notna()]
    for key, group in sub.groupby(NETWORK_KEYS + VARIANT_KEYS, sort=False):
        per_dim = [(float(d), g["fraction"].to_numpy()) for d, g in group.groupby("dim")]
        dims = [d for d, _ in per_dim]
        means = [v.mean() for _, v in per_dim]
        d90, lo, hi = crossing(dims, means)
        seeds = min(len(v) for _, v in per_dim)
        if seeds >= 2:
            ci_lo, ci_hi = _bootstrap(per_dim, rng)
        else:
            ci_lo, ci_hi = lo, hi
        absolute = [g["final_val_acc"].mean() / 100.0 for _, g in group.groupby("dim")]
        model, dataset = key[0], key[1]
        reference = LI_D_INT90.get((model, dataset)) if key[2] == "fpd" else None
        rows.append(
            dict(zip(NETWORK_KEYS + VARIANT_KEYS, key, strict=True))
            | {
                "num_params": int(group["num_params"].iloc[0]),
                "baseline_acc": float(group["baseline_acc"].iloc[0]),
                "d_int90": d90,
                "d_int90_lo": ci_lo,
                "d_int90_hi": ci_hi,
                "bracket_lo": lo,
                "bracket_hi": hi,
                "d_int90_abs": crossing(dims, absolute)[0],
                "seeds": seeds,
                "grid": " ".join(f"{d:g}" for d in dims),
                "li_d_int90": reference if reference is not None else math.nan,
                "ratio_to_li": d90 / reference if reference else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # Each method against FPD on the same network and bases (each at its own protocol; FPD
    # with the same update rule where there is one): how many fewer directions it needs.
    table["ratio_to_fpd"] = [_ratio_to_fpd(table, row) for row in table.itertuples()]
    return table


def _ratio_to_fpd(table: pd.DataFrame, row) -> float:
    if row.method == "fpd":
        return math.nan
    same = (table["model"] == row.model) & (table["dataset"] == row.dataset)
    fpd = table[same & (table["method"] == "fpd") & (table["distribution"] == row.distribution)]
    same_rule = fpd[fpd["update_rule"] == row.update_rule]
    fpd = same_rule if len(same_rule) else fpd
    return row.d_int90 / fpd["d_int90"].iloc[0] if len(fpd) else math.nan


def d_int90_text(d90: float, lo: float, hi: float, last: float) -> str:
    """d_int90 as the table shows it: the value, "<= d" when the first grid point already
    reaches 90 %, "> d" when no grid point does."""
    if math.isnan(d90):
        return f"> {last:,.0f}"
    if math.isnan(lo):
        return f"<= {d90:,.0f}"
    return f"{d90:,.0f}"


def _number(value: float) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:,.0f}"
    )


def wide_intrinsic_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The d_int90 table as shown: one row per network and method variant."""
    from rbd.report.style import DISTRIBUTION_LABELS, METHOD_LABELS

    table = d_int90_table(runs)
    rows = []
    for r in table.itertuples():
        interval = f"[{_number(r.d_int90_lo)}, {_number(r.d_int90_hi)}]"
        last = float(r.grid.split()[-1])
        rows.append(
            {
                "network (D)": f"{r.model}-{r.dataset} ({r.num_params:,})",
                "method": f"{METHOD_LABELS.get(r.method, r.method)}, "
                f"{DISTRIBUTION_LABELS.get(r.distribution, r.distribution)}, {r.update_rule}",
                "baseline (%)": f"{r.baseline_acc:.2f}",
                "d_int90": f"{d_int90_text(r.d_int90, r.bracket_lo, r.bracket_hi, last)} "
                f"{interval}",
                "90 % absolute": _number(r.d_int90_abs),
                "Li et al.": _number(r.li_d_int90),
                "/ Li et al.": "-" if math.isnan(r.ratio_to_li) else f"{r.ratio_to_li:.2f}",
                "/ FPD": "-" if math.isnan(r.ratio_to_fpd) else f"{r.ratio_to_fpd:.3f}",
                "grid (seeds)": f"{r.grid} ({r.seeds})",
            }
        )
    return pd.DataFrame(rows)
