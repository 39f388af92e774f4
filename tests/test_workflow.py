"""The Snakemake workflow: the jobs each preset plans, lint, and a small real run."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import ROOT


def snakemake(*args, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", ROOT / "Snakefile", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def planned_jobs(proc) -> dict[str, int]:
    assert proc.returncode == 0, proc.stderr + proc.stdout
    counts = re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M)
    return {rule: int(n) for rule, n in counts}


def test_paper_preset_plans_the_whole_table1_grid(tmp_path):
    start = time.monotonic()
    jobs = planned_jobs(
        snakemake("-n", "--cores", "8", "--directory", tmp_path, "figures/table1.pdf")
    )
    assert jobs["train"] == 6 * 4 * 3
    assert jobs["aggregate_table"] == 1 and jobs["render_table"] == 1
    assert time.monotonic() - start < 60


def test_quick_preset_plans_only_its_own_runs(tmp_path):
    proc = snakemake(
        "-n",
        "--cores",
        "2",
        "--directory",
        tmp_path,
        f"--configfile={ROOT / 'config/quick.yaml'}",
        "figures/table1.pdf",
    )
    jobs = planned_jobs(proc)
    quick = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    t1 = quick["experiments"]["table1"]
    assert jobs["train"] == len(t1["models"]) * len(t1["methods"]) * len(quick["defaults"]["seeds"])
    assert "cifar10" not in proc.stdout and "fashion_mnist" not in proc.stdout


def test_snakemake_lint_is_clean():
    proc = snakemake("--lint", f"--configfile={ROOT / 'config/quick.yaml'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout, proc.stdout


@pytest.mark.slow
def test_tiny_table1_end_to_end(tmp_path):
    config = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    config["preset"] = "tiny-test"
    config["defaults"] |= {"epochs": 1, "seeds": [0, 1]}
    config["experiments"]["table1"] |= {"models": ["fc"], "methods": ["sgd", "rbd"], "dims": [20]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(
        "--cores",
        "2",
        "--directory",
        tmp_path,
        f"--configfile={path}",
        "figures/table1.pdf",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_csv(tmp_path / "results/tables/table1.csv")
    assert set(table["method"]) == {"sgd", "rbd"}
    assert (table["n_seeds"] == 2).all()
    assert table["val_acc_mean"].between(10, 100).all()
    assert (tmp_path / "figures/table1.pdf").read_bytes().startswith(b"%PDF")
    assert "| FC-mnist5k |" in (tmp_path / "figures/table1.md").read_text()
    assert list((tmp_path / "logs/train").rglob("*.log"))
