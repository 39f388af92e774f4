# Config validation and the functions that turn config into file lists.
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from rbd.report.kinds import FIGURE_TABLE_KINDS, TABLE_KINDS
from rbd.workflow.config import (
    ConfigError,
    experiment_runs,
    in_default_target,
    validate_config,
)
from rbd.report.comparison import PAPER_TABLES, VERIFICATION_CSV
from rbd.workflow.cost import runtime_minutes, schedule_priority
from rbd.train.io import write_text
from rbd.report.tables import rst_escape
from rbd.train.runs import parse_run_key
from rbd.warm import start_server, stop_server
from rbd.workflow.snakemake import import_package_from

try:
    validate_config(
        config, Path(workflow.basedir) / "config/schemas/config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None

# Jobs import the rbd package of this checkout (the absolute path of the directory of
# the Snakefile), whatever else is installed. They run the interpreter that runs
# Snakemake (the project's venv), which inherits PYTHONPATH; or, under
# --software-deployment-method conda, the `python` of the rule's environment
# (workflow/envs/*.yaml: third-party packages only). Snakemake removes PYTHONPATH
# from a conda job's environment, so the command sets it itself.
RBD_ROOT = os.path.abspath(workflow.basedir)
_USE_CONDA = "conda" in {
    str(m).lower().split(".")[-1]
    for m in workflow.deployment_settings.deployment_method
}
PYTHON = (
    shlex.join(["env", f"PYTHONPATH={RBD_ROOT}", "python"])
    if _USE_CONDA
    else shlex.quote(sys.executable)
)
import_package_from(RBD_ROOT)
# Shared cluster storage: RBD_DATA_DIR overrides the config's data_dir.
DATA_DIR = os.environ.get("RBD_DATA_DIR") or config["data_dir"]
# Data set -> local folder to install it from (`rbd download --from`) instead of downloading.
DATA_SOURCE = config["data_source"]
# Data sets that ship inside a package and need no download step.
BUNDLED_DATASETS = {"mnist5k"}
RUNS = experiment_runs(config)
ALL_RUNS = sorted({spec.key for runs in RUNS.values() for spec in runs})


report: "../report/workflow.rst"


KINDS = {name: exp["kind"] for name, exp in config["experiments"].items()}
TABLE_EXPERIMENTS = [name for name, kind in KINDS.items() if kind in TABLE_KINDS]
FIGURE_EXPERIMENTS = [name for name, kind in KINDS.items() if kind not in TABLE_KINDS]
SWEEP_EXPERIMENTS = [name for name, kind in KINDS.items() if kind == "lr_sweep"]
# Figures with a table beside them (figures/X.md, .tex).
FIGURE_TABLE_EXPERIMENTS = [
    name for name, kind in KINDS.items() if kind in FIGURE_TABLE_KINDS
]


def one_of(names):
    """A wildcard regex matching exactly these names (and nothing when there are none)."""
    return "|".join(names) if names else "(?!)"


wildcard_constraints:
    experiment="[a-z][a-z0-9_]*",
    run=r"[a-z0-9_]+/[a-z0-9]+/[a-z]+/d[0-9]+_[a-z0-9-]+/[^/]+/seed[0-9]+",


def run_files(experiment):
    """run.json of every run the experiment needs."""
    return [f"results/runs/{spec.key}/run.json" for spec in RUNS[experiment]]


def train_args(run):
    """`rbd train` flags that define a run (from its key), each shell-quoted."""
    return parse_run_key(run).shell_args()


# How jobs run, not what they compute (interpreter, data location, device, threads,
# checkpoint interval, divergence threshold) lives in a launcher script whose path,
# the only thing the train rule's params hold of it, never changes: Snakemake reruns a
# finished job whose params changed, and none of these may retrain a finished run.
# Every setting that changes a result is in the run key, hence in the output path.
TRAIN_LAUNCHER = ".snakemake/rbd/train.sh"
# config warm_start (rbd/warm.py): local jobs fork from one process that imported
# PyTorch once, through this socket (relative: jobs run in the working directory).
WARM_SOCKET = ".snakemake/rbd/warm.sock"
WARM_LOG = "logs/warm_start.log"
_WARM_SERVER = []


def write_train_launcher(path=TRAIN_LAUNCHER, warm_socket=None):
    entry = ["rbd.warm", "run", "--socket", warm_socket] if warm_socket else ["rbd"]
    command = shlex.join(
        [
            *shlex.split(PYTHON),
            "-m",
            *entry,
            "train",
            "--data-dir",
            DATA_DIR,
            "--device",
            str(config["device"]),
            "--threads",
            str(config["threads"]),
            "--checkpoint-minutes",
            str(config["checkpoint_minutes"]),
            "--divergence-loss",
            str(config["divergence_loss"]),
        ]
    )
    write_text(
        Path(path),
        f'#!/bin/sh\n# Written by the workflow at start.\nexec {command} "$@"\n',
    )


def start_warm_start():
    """WARM_SOCKET once a warm-start server listens there, else None: only with config
    warm_start, the local executor (a cluster job runs elsewhere) and no conda (the
    jobs' interpreter is the one running Snakemake)."""
    if not config["warm_start"] or not workflow.local_exec or _USE_CONDA:
        return None
    server, problem = start_server(WARM_SOCKET, WARM_LOG)
    if server is None:
        print(f"rbd: warm start off ({problem}); every job imports PyTorch itself")
        return None
    _WARM_SERVER.append(server)
    return WARM_SOCKET


def stop_warm_start():
    while _WARM_SERVER:
        stop_server(_WARM_SERVER.pop())


# Written here only when missing, and again by `onstart` (Snakefile), which real runs
# execute and dry runs do not: a dry run, which Snakemake does not lock out while a
# real run works in this directory, never rewrites the launcher running jobs read.
if not os.path.exists(TRAIN_LAUNCHER):
    write_train_launcher()


def run_workers(run):
    """W of a distributed run (1 for a one-process run): its processes."""
    return parse_run_key(run).workers or 1


def train_threads(wildcards):
    """CPUs of a training job: `threads` (config key) for each of its W workers."""
    return run_workers(wildcards.run) * int(config["threads"])


def train_runtime(wildcards, attempt):
    """Wall-time limit of a training job in minutes (SLURM --time): rbd.workflow.cost's estimate
    from d, D, epochs and the device, times the config key `runtime_scale`. A job killed
    at its limit is retried (profile `retries`) with `attempt` times the time and resumes
    from its checkpoint."""
    return runtime_minutes(
        parse_run_key(wildcards.run),
        device=str(config["device"]),
        scale=float(config["runtime_scale"]),
        attempt=attempt,
    )


def train_priority(wildcards):
    """Multi-process jobs first, then the longest (rbd.workflow.cost.schedule_priority)."""
    spec = parse_run_key(wildcards.run)
    return schedule_priority(spec, device=str(config["device"]))


def train_mem_mb(wildcards):
    """4 GB hold a data set (CIFAR-10 at most) beside PyTorch; 1 GB more per extra worker."""
    return 4000 + 1000 * (run_workers(wildcards.run) - 1)


def uses_gpu():
    return str(config["device"]).startswith("cuda")


def train_gpus(wildcards):
    """GPUs of a training job: one per worker with device cuda, else none."""
    return run_workers(wildcards.run) if uses_gpu() else 0


def train_tasks(wildcards):
    """SLURM tasks: one on CPUs; on GPUs none, so that the SLURM plugin sets no
    --ntasks-per-gpu, which srun rejects beside --cpus-per-task (plugin issues #342,
    #373; the plugin omits the flag for tasks < 1). `rbd train --workers W` spawns its
    W processes itself, in the one job on one node (resource `nodes`)."""
    return 0 if train_gpus(wildcards) else 1


def data_ready(run):
    """The marker of a verified data set the run reads ([] for bundled data)."""
    dataset = parse_run_key(run).dataset
    if dataset in BUNDLED_DATASETS:
        return []
    return [f"{DATA_DIR}/.rbd/{dataset}.ready"]


def description(experiment):
    """What the experiment runs, in words (its config description, else its name)."""
    return config["experiments"][experiment].get("description", experiment)


def experiment_targets(name):
    """The files that make up experiment `name`."""
    targets = [f"figures/{name}.pdf", f"results/tables/{name}.csv"]
    if name in TABLE_EXPERIMENTS or name in FIGURE_TABLE_EXPERIMENTS:
        targets += [f"figures/{name}.md", f"figures/{name}.tex"]
    if name in SWEEP_EXPERIMENTS:
        targets.append(f"results/tables/{name}_best.yaml")
    return targets


def paper_vs_ours_tables(wildcards):
    """The CSVs figures/paper_vs_ours.pdf draws ours from (config key `paper_vs_ours`):
    the committed verification summary of this checkout, or this run's Table 1 and 2."""
    if config["paper_vs_ours"] == "verification":
        return [os.path.join(RBD_ROOT, VERIFICATION_CSV)]
    names = [name for name in PAPER_TABLES if name in KINDS]
    if not names:
        raise WorkflowError(
            "paper_vs_ours: results needs the experiment table1 or table2 in the config"
        )
    return [f"results/tables/{name}.csv" for name in names]


def all_targets():
    """Every experiment except the opt-in ones (sweeps, `opt_in: true`)."""
    return [
        target
        for name in KINDS
        if in_default_target(config, name)
        for target in experiment_targets(name)
    ]
