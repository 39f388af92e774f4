"""Helpers that several test modules share (fixtures are in conftest.py).

- the repository root and the two subprocesses the tests start: the `rbd` CLI
  (``run_rbd``) and Snakemake on this checkout's Snakefile (``snakemake``);
- what a dry run plans for each train job (``_train_resources``) and the sbatch line the
  installed SLURM plugin builds from it (``_sbatch_line``);
- a small model, a batch and the dense references of the optimiser tests;
- run directories as `rbd train` writes them (``make_run``, ``_timed``) and ``is_pdf``.

Heavy imports (torch, rbd, pandas, the SLURM plugin) are made inside the helpers that
need them, so that importing this module costs nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --- subprocesses -------------------------------------------------------------------------


def run_rbd(*args, cwd=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    """`python -m rbd ARGS` with this interpreter; returns the completed process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "rbd", *map(str, args)],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rbd {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def snakemake(*args, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", ROOT / "Snakefile", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the train jobs of a dry run and their sbatch lines -------------------------------------


def _train_resources(stdout: str) -> dict[str, dict[str, str]]:
    """run key -> the threads and resources of its planned train job (dry run output)."""
    jobs = {}
    for block in re.split(r"^\[.*\]$", stdout, flags=re.M):
        run = re.search(r"wildcards: run=(\S+)", block)
        resources = re.search(r"resources: (.+)", block)
        if run and resources:
            values = dict(item.split("=", 1) for item in resources[1].split(", "))
            threads = re.search(r"threads: (\d+)", block)
            values["threads"] = threads[1] if threads else "1"
            jobs[run[1]] = values
    return jobs


class _Resources(dict):
    __getattr__ = dict.__getitem__


def _sbatch_line(resources: dict, threads: int) -> str:
    """The sbatch command the installed SLURM plugin builds for a job with these resources."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    numbers = {k: int(v) if v.isdigit() else v for k, v in resources.items() if k != "threads"}
    job = SimpleNamespace(resources=_Resources(numbers), threads=threads)
    # account and partition as the executor adds them when a resource names them (its
    # get_account_arg / get_partition_arg; without one it asks SLURM, not here)
    account, partition = (
        f" {flag} {shlex.quote(str(numbers[key]))}" if numbers.get(key) else ""
        for flag, key in (("-A", "slurm_account"), ("-p", "slurm_partition"))
    )
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account=account,
                  partition=partition, workdir=None)  # fmt: skip
    # as the plugin submits a job: the command, then its GPU request
    return get_submit_command(job, params) + set_gres_string(job)


# --- a small model, a batch and dense references for the optimisers -----------------------


def small_model(seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))


def batch(seed=1):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def loss_of(model, x, y):
    from torch import nn

    return nn.functional.cross_entropy(model(x), y)


def flat_params(model):
    import torch

    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def dense_phi(seed, step, compartment, dim, size, distribution="gaussian", worker=0):
    from rbd.bases import direction_seed, generate_directions

    seeds = [direction_seed(seed, step, compartment, worker, i) for i in range(dim)]
    return generate_directions(seeds, size, distribution).double()


# --- run directories as `rbd train` writes them, and the figures made from them ------------


def make_run(
    root,
    method,
    seed,
    val_accs,
    *,
    status="done",
    dim=250,
    model="fc",
    dataset="mnist",
    distribution="gaussian",
    compartments="none",
    switch="none",
    lr=0.5,
    grad_corr=0.05,
    num_params=101_770,
    num_coordinates=None,
    metrics=None,
    settings=None,
):
    """A run directory as `rbd train` writes it: run.json and one metrics row per epoch.

    `val_accs` is the validation accuracy of each finished epoch (a number: two
    epochs, the first at 11 %). A diverged run is written as train.py does: its
    status says so and metrics.csv holds the epochs finished before it diverged.
    `metrics` adds columns (name -> one value per epoch), `settings` config entries.
    """
    import numpy as np
    import pandas as pd

    if np.isscalar(val_accs):
        val_accs = [11.0, val_accs]
    name = f"{model}-{dataset}-{method}-{dim}-{distribution}-{compartments}-{switch}-{lr}-{seed}"
    name += "".join(f"-{v}" for v in (settings or {}).values())
    run = root / name.replace(":", "_")
    run.mkdir()
    config = {
        "model": model,
        "dataset": dataset,
        "method": method,
        "dim": dim,
        "seed": seed,
        "distribution": distribution,
        "compartments": compartments,
        "switch": switch,
        "lr": lr,
        "epochs": len(val_accs),
        "augment": False,
    } | (settings or {})
    record = {
        "config": config,
        "status": status,
        "num_params": num_params,
        "num_coordinates": num_coordinates if num_coordinates is not None else dim,
        "epochs_completed": len(val_accs),
    }
    (run / "run.json").write_text(json.dumps(record))
    rows = [
        {
            "epoch": e + 1,
            "method": method,
            "train_loss": 1.0 / (e + 1),
            "train_acc": acc,
            "val_loss": 1.0 / (e + 1),
            "val_acc": acc,
            "grad_corr_mean": grad_corr,
        }
        | {column: values[e] for column, values in (metrics or {}).items()}
        for e, acc in enumerate(val_accs)
    ]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    return run / "run.json"


def _timed(seconds, images=4000):
    """metrics columns of an epoch of `images` images that took `seconds` each."""
    return {"seconds": seconds, "images_per_s": [images / t for t in seconds]}


def is_pdf(path) -> bool:
    """A complete, non-empty PDF: the header, a page, and the end-of-file marker."""
    data = path.read_bytes()
    return (
        data.startswith(b"%PDF-")
        and b"/Page" in data
        and data.rstrip().endswith(b"%%EOF")
        and len(data) > 1000
    )
