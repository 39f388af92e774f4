"""The SLURM profile against a real one-node SLURM cluster started on this machine.

Run with `make test-cluster` (root; installs Debian's slurm and munge packages
when missing). The default `make test` skips this module: it needs root, starts
daemons and takes minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

if os.environ.get("RBD_CLUSTER_TEST") != "1":
    pytest.skip("SLURM cluster test: run `make test-cluster` (root)", allow_module_level=True)

from localslurm import LocalSlurm  # noqa: E402 (after the skip: imports nothing when skipped)

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# Determinism across machines needs one thread per job (config key `threads`).
TABLE1 = dict(models=["fc"], methods=["sgd", "rbd"], seeds=[0, 1], epochs=2)
WORKFLOW_TIMEOUT = 420


def cluster_config(path: Path, *, checkpoint_minutes=None, **table1) -> Path:
    """config/quick.yaml cut down to a few short Table 1 runs (preset cluster-test)."""
    config = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    experiment = config["experiments"]["table1"]
    config["experiments"] = {"table1": experiment}
    config["preset"] = "cluster-test"
    config["threads"] = 1
    seeds, epochs = table1.pop("seeds"), table1.pop("epochs")
    config["defaults"] |= {"seeds": seeds, "epochs": epochs}
    experiment |= table1
    experiment.pop("seeds", None)
    experiment.pop("epochs", None)
    if checkpoint_minutes is not None:
        config["checkpoint_minutes"] = checkpoint_minutes
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_args(workdir: Path, config: Path, profile: str, *extra: str) -> list[str]:
    return [
        SNAKEMAKE,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--profile",
        str(ROOT / "profiles" / profile),
        *extra,
    ]


def run_workflow(args: list[str], env: dict, log: Path) -> float:
    """Run Snakemake to the end; its output goes to `log`. Returns wall seconds."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=WORKFLOW_TIMEOUT
        )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"snakemake failed:\n{log.read_text()[-6000:]}"
    return seconds


# Through SLURM: the profile as shipped, with a short first status check.
SLURM_EXTRA = ("--slurm-init-seconds-before-status-checks", "2")


@pytest.fixture(scope="module")
def cluster():
    # Not under pytest's tmp_path: munged needs every directory above its socket
    # to be searchable by the munge user, and pytest's are private to root.
    root = Path(tempfile.mkdtemp(prefix="rbd-slurm-"))
    try:
        with LocalSlurm(root) as slurm:
            pids = [proc.pid for proc in slurm.procs.values()]
            yield slurm
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert not slurm.leftovers, "job processes outlived the cluster:\n" + "\n".join(slurm.leftovers)
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not alive, f"daemons still running after stop: {alive}"
    left = subprocess.run(["pgrep", "-a", "slurmstepd"], capture_output=True, text=True).stdout
    assert not left, f"job step daemons left running:\n{left}"


def test_table1_through_slurm_equals_local(cluster, tmp_path):
    config = cluster_config(tmp_path / "config.yaml", **TABLE1)
    target = ["results/tables/table1.csv", "figures/table1.md"]
    local_seconds = run_workflow(
        snakemake_args(tmp_path / "local", config, "local", "--cores", "2", *target),
        os.environ.copy(),
        tmp_path / "local.log",
    )
    slurm_seconds = run_workflow(
        snakemake_args(tmp_path / "slurm", config, "slurm", *SLURM_EXTRA, *target),
        cluster.env(),
        tmp_path / "slurm.log",
    )
    print(
        f"Table 1 cut down ({len(TABLE1['methods']) * len(TABLE1['seeds'])} runs of "
        f"{TABLE1['epochs']} epochs): through SLURM {slurm_seconds:.0f} s, "
        f"locally with --cores 2 {local_seconds:.0f} s"
    )

    jobs = cluster.run("squeue", "--states=all", "-h", "-o", "%i %T").stdout.split("\n")
    assert sum(" COMPLETED" in line for line in jobs) >= 4, f"SLURM ran too few jobs: {jobs}"
    # The quick preset's warm starts serve local jobs only: SLURM's start cold, in their
    # own allocation (so the equal tables below also compare warm against cold).
    launcher = ".snakemake/rbd/train.sh"
    assert "rbd.warm run" in (tmp_path / "local" / launcher).read_text()
    assert "rbd.warm" not in (tmp_path / "slurm" / launcher).read_text()
    tables = {
        name: pd.read_csv(tmp_path / name / "results/tables/table1.csv")
        .sort_values(["method", "model", "dataset"])
        .reset_index(drop=True)
        for name in ("local", "slurm")
    }
    assert len(tables["slurm"]) == len(TABLE1["methods"])
    accuracy = [column for column in tables["local"] if column.startswith("val_acc")]
    pd.testing.assert_frame_equal(tables["slurm"][accuracy], tables["local"][accuracy])
    for run_json in (tmp_path / "local/results/runs").rglob("run.json"):
        on_slurm = tmp_path / "slurm" / run_json.relative_to(tmp_path / "local")
        local, slurm = json.loads(run_json.read_text()), json.loads(on_slurm.read_text())
        assert slurm["final_val_acc"] == local["final_val_acc"], run_json


def test_scancelled_training_job_is_resubmitted_and_resumes(cluster, tmp_path):
    # One run long enough to cancel mid-way, checkpointing every ~0.3 s.
    one_run = dict(models=["fc"], methods=["rbd"], seeds=[0], epochs=8)
    config = cluster_config(tmp_path / "config.yaml", checkpoint_minutes=0.005, **one_run)
    workdir = tmp_path / "work"
    args = snakemake_args(workdir, config, "slurm", *SLURM_EXTRA, "results/tables/table1.csv")
    with open(tmp_path / "snakemake.log", "w") as out:
        proc = subprocess.Popen(args, env=cluster.env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        checkpoint = wait_for(lambda: next(workdir.glob("results/runs/**/checkpoint.pt"), None))
        running = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
        assert len(running) == 1, f"expected one running training job, found {running}"
        cluster.run("scancel", running[0])
        proc.wait(timeout=WORKFLOW_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "snakemake.log").read_text()
    assert proc.returncode == 0, f"snakemake failed after scancel:\n{log[-6000:]}"

    state = cluster.run("squeue", "--states=all", "-h", "-j", running[0], "-o", "%T").stdout
    assert state.strip() == "CANCELLED", state
    run_dir = checkpoint.parent
    record = json.loads((run_dir / "run.json").read_text())
    run = run_dir.relative_to(workdir / "results/runs")
    train_log = (workdir / "logs/train" / f"{run}.log").read_text()
    assert "resumed" in train_log, train_log
    assert record["resumes"] >= 1
    assert record["epochs_completed"] == one_run["epochs"]
    assert not checkpoint.exists(), "a finished run keeps no checkpoint"


def wait_for(found, timeout: float = 180.0, every: float = 0.2):
    """Poll `found()` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"nothing after {timeout:.0f} s")
