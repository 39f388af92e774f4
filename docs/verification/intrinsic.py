"""Summarise the intrinsic-dimension runs (config/intrinsic.yaml's run keys) into the
verification CSVs and figure: one row per run with its accuracy at epochs 25, 50, 75 and
its last (how flat the curve is), d_int90 per method and network, and the figure.

    python docs/verification/intrinsic.py RESULTS_DIR [--out docs/verification]

RESULTS_DIR holds `runs/<run key>/` directories (run.json, metrics.csv; a run still
training has neither and is listed by the epoch its log reached). Uses rbd.report.intrinsic,
so the numbers are the workflow's own.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's rbd

from rbd.report.intrinsic import d_int90_table, intrinsic_runs  # noqa: E402
from rbd.report.plots import plot_intrinsic_dim  # noqa: E402
from rbd.report.style import save_figure  # noqa: E402
from rbd.spec import METRICS, RUN_JSON  # noqa: E402

CHECK_EPOCHS = (25, 50, 75)
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) .* val_acc ([0-9.]+)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "verification")
    args = parser.parse_args(argv)
    runs_dir = args.results / "runs"
    done = sorted(p.parent for p in runs_dir.rglob(RUN_JSON))
    table = intrinsic_runs(done, "intrinsic_dim")
    table["run_key"] = [str(Path(d).relative_to(runs_dir)) for d in table["run_dir"]]
    for epoch in CHECK_EPOCHS:
        table[f"val_acc_e{epoch}"] = [_at_epoch(Path(d) / METRICS, epoch) for d in table["run_dir"]]
    table = table.drop(columns=["run_dir"])
    unfinished = []
    for log in sorted(runs_dir.rglob("log.txt")):
        if not (log.parent / RUN_JSON).exists():
            last = EPOCH_LINE.findall(log.read_text())
            epoch, epochs, acc = last[-1] if last else ("0", "?", "")
            unfinished.append({"run_key": str(log.parent.relative_to(runs_dir)),
                               "epoch": int(epoch), "epochs": epochs, "val_acc": acc})  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "intrinsic_dim_runs.csv", index=False)
    d90 = d_int90_table(intrinsic_runs(done, "intrinsic_dim"))
    d90.to_csv(args.out / "intrinsic_dim.csv", index=False)
    pd.DataFrame(unfinished, columns=["run_key", "epoch", "epochs", "val_acc"]).to_csv(
        args.out / "intrinsic_dim_unfinished.csv", index=False
    )
    fig = plot_intrinsic_dim(intrinsic_runs(done, "intrinsic_dim"),
                             "Intrinsic dimension, Li et al.'s protocol on MNIST")  # fmt: skip
    save_figure(fig, args.out / "intrinsic_dim.png")
    print(d90.to_string())
    return 0


def _at_epoch(path: Path, epoch: int) -> float:
    metrics = pd.read_csv(path)
    row = metrics[metrics["epoch"] == epoch]
    return float(row["val_acc"].iloc[0]) if len(row) else float("nan")


if __name__ == "__main__":
    sys.exit(main())
