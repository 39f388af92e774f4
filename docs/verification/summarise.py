"""Summarise full-protocol runs into this folder's CSVs and the README's table.

Each argument names a cell and its run directory, ``CELL=DIR``: a finished
run (``metrics.csv``, ``run.json``) or one still training (its
``checkpoint.pt`` holds the epochs so far). Cells named ``table1:...`` get the
paper's Table 1 value beside ours; ``reading:...`` cells are measurements
made to explain a gap. Rows of cells not named are kept, so runs from
earlier sessions stay; a named cell's rows are replaced.

    .venv/bin/python docs/verification/summarise.py table1:rbd-fc-mnist=results/runs/... [...]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

from rbd.io import load_torch, write_text
from rbd.paper import TABLE1
from rbd.runs import RunSpec

HERE = Path(__file__).resolve().parent
EPOCHS_CSV = HERE / "full_protocol_epochs.csv"
SUMMARY_CSV = HERE / "full_protocol.csv"
EPOCH_COLUMNS = ["cell", "run_key", "bases_version", "epoch", "val_acc", "train_acc", "val_loss"]
EPOCH_COLUMNS += ["grad_corr_mean", "grad_corr_tensors_mean"]
SUMMARY_COLUMNS = ["cell", "run_key", "bases_version", "status", "epochs", "val_acc"]
SUMMARY_COLUMNS += ["val_acc_last10_mean", "grad_corr", "grad_corr_tensors", "paper"]
SUMMARY_COLUMNS += ["paper_std", "diff"]
METHODS = ("sgd", "rbd", "fpd", "nes")
# Epochs averaged for the "last 10" column.
LAST = 10


def read_run(directory: Path) -> tuple[dict, list[dict], str]:
    """(the run's settings, its epoch rows, its status) from a finished or running run."""
    if (directory / "run.json").exists() and (directory / "metrics.csv").exists():
        record = json.loads((directory / "run.json").read_text())
        with open(directory / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return record["config"], rows, record["status"]
    checkpoint = load_torch(directory / "checkpoint.pt")
    return checkpoint["spec"], checkpoint["rows"], "running"


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float, digits: int) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def summarise(cell: str, directory: Path) -> tuple[dict, list[dict]]:
    config, rows, status = read_run(directory)
    spec = RunSpec(**{k: v for k, v in config.items() if k in RunSpec.__dataclass_fields__})
    version = "" if spec.method == "sgd" else config.get("bases_version", 1)
    epochs = [
        {
            "cell": cell,
            "run_key": spec.key,
            "bases_version": version,
            "epoch": int(row["epoch"]),
            "val_acc": _number(row["val_acc"]),
            "train_acc": _number(row["train_acc"]),
            "val_loss": _number(row["val_loss"]),
            "grad_corr_mean": _fmt(_number(row.get("grad_corr_mean")), 4),
            "grad_corr_tensors_mean": _fmt(_number(row.get("grad_corr_tensors_mean")), 4),
        }
        for row in rows
    ]
    last = epochs[-1]
    accs = [e["val_acc"] for e in epochs[-LAST:]]
    paper, paper_std = (math.nan, math.nan)
    if cell.startswith("table1:"):
        paper, paper_std = TABLE1[(spec.model, spec.dataset)][spec.method]
    summary = {
        "cell": cell,
        "run_key": spec.key,
        "bases_version": version,
        "status": "done" if status == "done" and last["epoch"] == spec.epochs else status,
        "epochs": last["epoch"],
        "val_acc": last["val_acc"],
        "val_acc_last10_mean": round(sum(accs) / len(accs), 2),
        "grad_corr": last["grad_corr_mean"],
        "grad_corr_tensors": last["grad_corr_tensors_mean"],
        "paper": _fmt(paper, 3).rstrip("0").rstrip("."),
        "paper_std": _fmt(paper_std, 3).rstrip("0").rstrip("."),
        "diff": _fmt(last["val_acc"] - paper, 2),
    }
    return summary, epochs


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _csv(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def markdown(summaries: list[dict]) -> str:
    """The README's table: ours beside the paper's."""
    lines = [
        "| cell | epochs | ours (last epoch) | mean of last 10 epochs | paper (100 epochs) "
        "| ours - paper | gradient correlation, global / mean per tensor |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        name = s["cell"].partition(":")[2]
        paper = f"{s['paper']} ± {s['paper_std']}" if s["paper"] else ""
        diff = f"{float(s['diff']):+.2f}" if s["diff"] else ""
        corr = f"{s['grad_corr']} / {s['grad_corr_tensors']}" if s["grad_corr"] else ""
        epochs = str(s["epochs"]) if s["status"] == "done" else f"{s['epochs']} ({s['status']})"
        acc = float(s["val_acc"])
        lines.append(
            f"| {name} | {epochs} | {acc:.2f} | {float(s['val_acc_last10_mean']):.2f} "
            f"| {paper} | {diff} | {corr} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="*", help="CELL=RUN_DIR")
    args = parser.parse_args()
    named = dict(arg.split("=", 1) for arg in args.cells)
    summaries = [s for s in _read(SUMMARY_CSV) if s["cell"] not in named]
    epochs = [e for e in _read(EPOCHS_CSV) if e["cell"] not in named]
    for cell, directory in named.items():
        summary, rows = summarise(cell, Path(directory))
        summaries.append(summary)
        epochs.extend(rows)
    for row in summaries + epochs:
        # Rows from before the column: every method but SGD drew version 1 bases.
        if not row.get("bases_version") and row["run_key"].split("/")[2] != "sgd":
            row["bases_version"] = 1
    order = {name: i for i, name in enumerate(dict.fromkeys(s["cell"] for s in summaries))}
    for s in summaries:
        if s["cell"].startswith("table1:"):
            # Table 1's order: pairs as the paper lists them, then SGD, RBD, FPD, NES.
            model, dataset, method = s["run_key"].split("/")[1::-1] + [s["run_key"].split("/")[2]]
            pairs = list(TABLE1)
            order[s["cell"]] = -1000 + 10 * pairs.index((model, dataset)) + METHODS.index(method)
    summaries.sort(key=lambda s: order[s["cell"]])
    epochs.sort(key=lambda e: (order[e["cell"]], int(e["epoch"])))
    write_text(SUMMARY_CSV, _csv(summaries, SUMMARY_COLUMNS))
    write_text(EPOCHS_CSV, _csv(epochs, EPOCH_COLUMNS))
    print(markdown(summaries))


if __name__ == "__main__":
    main()
