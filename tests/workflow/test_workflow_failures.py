"""Failures in the workflow: a diverged run is marked in the table; a failing job names its log."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from tests.helpers import ROOT


def build_table1(tmp_path, methods, **overrides) -> subprocess.CompletedProcess:
    """Run the workflow for a one-epoch, one-seed fc Table 1 on mnist5k in tmp_path."""
    config = yaml.safe_load((ROOT / "config/quick.yaml").read_text())
    config |= {"preset": "failure-test", **overrides.pop("top", {})}
    config["defaults"] |= {"epochs": 1, "seeds": [0]}
    for method, lr in overrides.pop("rates", {}).items():
        config["learning_rates"][method]["fc-mnist5k"] = lr
    config["experiments"] = {
        "table1": {"kind": "method_table", "models": ["fc"], "datasets": ["mnist5k"],
                   "methods": methods, "dims": [10]}
    }  # fmt: skip
    path = tmp_path / "failure.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", ROOT / "Snakefile", "--cores", "2",
         "--directory", tmp_path, f"--configfile={path}", "figures/table1.md"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_diverged_run_is_marked_in_the_built_table(tmp_path):
    proc = build_table1(tmp_path, ["sgd", "rbd"], rates={"rbd": 1.0e12})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "results/runs").rglob("run.json")]
    assert sorted(r["status"] for r in records) == ["diverged", "done"]
    table = (tmp_path / "figures/table1.md").read_text().splitlines()
    lines = [line for line in table if "|" in line]
    header, row = lines[0].split("|"), lines[-1].split("|")
    cells = {name.strip(): cell.strip() for name, cell in zip(header, row, strict=True)}
    assert cells["RBD"].startswith("diverged")
    assert cells["SGD"].split()[0].replace(".", "").isdigit()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_failing_job_is_reported_with_its_log(tmp_path):
    proc = build_table1(tmp_path, ["sgd"], top={"device": "cuda"})
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "rbd: a job failed. Its log:" in output
    logs = list((tmp_path / "logs/train").rglob("*.log"))
    assert len(logs) == 1 and str(logs[0].relative_to(tmp_path)) in output
    assert "CUDA is not available" in logs[0].read_text()
