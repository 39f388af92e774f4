"""Summarise full-protocol runs into this folder's CSVs and docs/results.md's table.

Each argument names a cell and its run directories, ``CELL=DIR[,DIR...]`` (one
per seed): finished runs (``metrics.csv``, ``run.json``) or runs still
training (their ``checkpoint.pt`` holds the epochs so far). A cell's accuracy
is the mean over its seeds of each run's last epoch, with their std. Cells
named ``table1:...`` get the paper's Table 1 value beside ours; ``reading:...``
cells are measurements made to explain a gap. Rows of cells not named are kept, so runs from
earlier sessions stay; a named cell's rows are replaced, except the epoch rows of seeds
its new directories do not hold (runs of earlier sessions, whose directories are gone:
another seed joins them). The figure of the README and docs/results.md,
``paper_vs_ours.png``, is redrawn from the new summary (``rbd paper-vs-ours``). The
table printed goes between the ``<!-- full-protocol -->`` markers of docs/results.md;
the README's status counts follow from the summary (tests/contracts/test_front_door.py checks them).

    .venv/bin/python docs/verification/summarise.py table1:rbd-fc-mnist=results/runs/... [...]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

from rbd.report.paper import TABLE1
from rbd.spec import RunSpec, parse_run_key
from rbd.spec.io import write_text
from rbd.train.checkpoints import load_torch

HERE = Path(__file__).resolve().parent
EPOCHS_CSV = HERE / "full_protocol_epochs.csv"
SUMMARY_CSV = HERE / "full_protocol.csv"
FIGURE = HERE / "paper_vs_ours.png"
EPOCH_COLUMNS = ["cell", "run_key", "bases_version", "seed", "epoch", "val_acc", "train_acc"]
EPOCH_COLUMNS += ["val_loss"]
EPOCH_COLUMNS += ["grad_corr_mean", "grad_corr_tensors_mean"]
SUMMARY_COLUMNS = ["cell", "run_key", "bases_version", "seeds", "status", "epochs", "val_acc"]
SUMMARY_COLUMNS += ["val_acc_std", "val_acc_last10_mean", "grad_corr", "grad_corr_tensors", "paper"]
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
    return checkpoint["spec"], checkpoint["rows"], "unfinished"


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float, digits: int) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def _kept_runs(rows: list[dict]) -> list[tuple[RunSpec, str, list[dict]]]:
    """Runs recorded here only (their epoch rows), one per seed, as `summarise` lists runs."""
    runs = []
    for key in dict.fromkeys(row["run_key"] for row in rows):
        mine = [dict(row) for row in rows if row["run_key"] == key]
        for row in mine:
            row["epoch"] = int(row["epoch"])
            for name in ("val_acc", "train_acc", "val_loss"):
                row[name] = _number(row[name])
        spec = parse_run_key(key)
        status = "done" if mine[-1]["epoch"] == spec.epochs else "unfinished"
        runs.append((spec, status, mine))
    return runs


def summarise(cell: str, directories: list[Path], kept: list[dict] = ()) -> tuple[dict, list[dict]]:
    """The cell's summary row (mean over its runs) and every run's epoch rows; `kept`:
    epoch rows already here of the cell's other seeds."""
    runs, epochs = [], []
    for directory in directories:
        config, rows, status = read_run(directory)
        spec = RunSpec(**{k: v for k, v in config.items() if k in RunSpec.__dataclass_fields__})
        version = "" if spec.method == "sgd" else config.get("bases_version", 1)
        mine = [
            {
                "cell": cell,
                "run_key": spec.key,
                "bases_version": version,
                "seed": spec.seed,
                "epoch": int(row["epoch"]),
                "val_acc": _number(row["val_acc"]),
                "train_acc": _number(row["train_acc"]),
                "val_loss": _number(row["val_loss"]),
                "grad_corr_mean": _fmt(_number(row.get("grad_corr_mean")), 4),
                "grad_corr_tensors_mean": _fmt(_number(row.get("grad_corr_tensors_mean")), 4),
            }
            for row in rows
        ]
        runs.append((spec, status, mine))
        epochs.extend(mine)
    seeds = {spec.seed for spec, _, _ in runs}
    for run in _kept_runs([row for row in kept if int(row["seed"] or 0) not in seeds]):
        runs.append(run)
        epochs.extend(run[2])
    runs.sort(key=lambda run: run[0].seed)
    spec, status, first = runs[0]
    finals = [mine[-1]["val_acc"] for _, _, mine in runs]
    mean = sum(finals) / len(finals)
    std = (
        math.sqrt(sum((a - mean) ** 2 for a in finals) / (len(finals) - 1)) if len(runs) > 1 else 0
    )
    last10 = [sum(e["val_acc"] for e in mine[-LAST:]) / len(mine[-LAST:]) for _, _, mine in runs]
    done = all(st == "done" and mine[-1]["epoch"] == sp.epochs for sp, st, mine in runs)
    paper, paper_std = (math.nan, math.nan)
    if cell.startswith("table1:"):
        paper, paper_std = TABLE1[(spec.model, spec.dataset)][spec.method]
    summary = {
        "cell": cell,
        "run_key": spec.key,
        "bases_version": first[-1]["bases_version"],
        "seeds": " ".join(str(sp.seed) for sp, _, _ in runs),
        "status": "done" if done else "unfinished",
        "epochs": min(mine[-1]["epoch"] for _, _, mine in runs),
        "val_acc": round(mean, 2),
        "val_acc_std": round(std, 2) if len(runs) > 1 else "",
        "val_acc_last10_mean": round(sum(last10) / len(last10), 2),
        "grad_corr": first[-1]["grad_corr_mean"],
        "grad_corr_tensors": first[-1]["grad_corr_tensors_mean"],
        "paper": _fmt(paper, 3).rstrip("0").rstrip("."),
        "paper_std": _fmt(paper_std, 3).rstrip("0").rstrip("."),
        "diff": _fmt(mean - paper, 2),
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
    """docs/results.md's table: ours beside the paper's."""
    lines = [
        "| cell | epochs | ours (last epoch; mean ± std over seeds) | mean of last 10 epochs "
        "| paper (100 epochs) | ours - paper "
        "| gradient correlation, global / mean per tensor | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        name = s["cell"].partition(":")[2]
        if str(s.get("bases_version")) == "1":
            name += " (bases v1)"
        paper = f"{s['paper']} ± {s['paper_std']}" if s["paper"] else ""
        diff = f"{float(s['diff']):+.2f}" if s["diff"] else ""
        corr = f"{s['grad_corr']} / {s['grad_corr_tensors']}" if s["grad_corr"] else ""
        epochs = str(s["epochs"]) if s["status"] == "done" else f"{s['epochs']} of 100"
        acc = f"{float(s['val_acc']):.2f}"
        if s.get("val_acc_std"):
            acc += f" ± {float(s['val_acc_std']):.2f}"
        seeds = s.get("seeds") or "0"
        lines.append(
            f"| {name} | {epochs} | {acc} | {float(s['val_acc_last10_mean']):.2f} "
            f"| {paper} | {diff} | {corr} | {seeds} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="*", help="CELL=RUN_DIR")
    args = parser.parse_args()
    named = dict(arg.split("=", 1) for arg in args.cells)
    summaries = [s for s in _read(SUMMARY_CSV) if s["cell"] not in named]
    recorded = _read(EPOCHS_CSV)
    epochs = [e for e in recorded if e["cell"] not in named]
    for cell, directories in named.items():
        kept = [e for e in recorded if e["cell"] == cell]
        summary, rows = summarise(cell, [Path(d) for d in directories.split(",")], kept)
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
        elif s["cell"].startswith("table2:"):
            # Table 2's cells after Table 1's, before the readings.
            order[s["cell"]] -= 500
    summaries.sort(key=lambda s: order[s["cell"]])
    epochs.sort(key=lambda e: (order[e["cell"]], int(e["epoch"])))
    write_text(SUMMARY_CSV, _csv(summaries, SUMMARY_COLUMNS))
    write_text(EPOCHS_CSV, _csv(epochs, EPOCH_COLUMNS))
    print(markdown(summaries))
    from rbd.cli import main as rbd

    rbd(["paper-vs-ours", str(SUMMARY_CSV), "--out", str(FIGURE)])


if __name__ == "__main__":
    main()
