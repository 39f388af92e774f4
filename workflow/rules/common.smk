# Config validation and the functions that turn config into file lists.
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from rbd.config import ConfigError, experiment_runs, validate_config
from rbd.runs import parse_run_key

try:
    validate_config(
        config, Path(workflow.basedir) / "config/schemas/config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None

# Jobs run the interpreter that runs Snakemake (the project's venv), or the
# conda environment's `python` under --software-deployment-method conda.
_USE_CONDA = "conda" in {
    str(m).lower().split(".")[-1]
    for m in workflow.deployment_settings.deployment_method
}
PYTHON = "python" if _USE_CONDA else shlex.quote(sys.executable)
# Shared cluster storage: RBD_DATA_DIR overrides the config's data_dir.
DATA_DIR = os.environ.get("RBD_DATA_DIR") or config.get("data_dir", "resources/data")
# Data sets that ship inside a package and need no download step.
BUNDLED_DATASETS = {"mnist5k"}
RUNS = experiment_runs(config)
ALL_RUNS = sorted({spec.key for runs in RUNS.values() for spec in runs})
TABLE_EXPERIMENTS = [name for name in RUNS if name.startswith("table")]


wildcard_constraints:
    experiment="[a-z][a-z0-9_]*",
    run=r"[a-z0-9_]+/[a-z0-9]+/[a-z]+/d[0-9]+_[a-z0-9-]+/[^/]+/seed[0-9]+",


def run_files(experiment):
    """run.json of every run the experiment needs."""
    return [f"results/runs/{spec.key}/run.json" for spec in RUNS[experiment]]


def train_args(run):
    """`rbd train` flags for a run key, each shell-quoted."""
    operational = [
        "--data-dir",
        DATA_DIR,
        "--device",
        config.get("device", "auto"),
        "--threads",
        str(config.get("threads", 1)),
        "--checkpoint-minutes",
        str(config.get("checkpoint_minutes", 10)),
        "--divergence-loss",
        str(config.get("divergence_loss", 1000)),
    ]
    return f"{parse_run_key(run).shell_args()} {shlex.join(operational)}"


def data_ready(run):
    """The marker of a verified data set the run reads ([] for bundled data)."""
    dataset = parse_run_key(run).dataset
    if dataset in BUNDLED_DATASETS:
        return []
    return [f"{DATA_DIR}/.rbd/{dataset}.ready"]


def all_targets():
    targets = []
    for name in TABLE_EXPERIMENTS:
        targets += [
            f"figures/{name}.pdf",
            f"figures/{name}.md",
            f"results/tables/{name}.csv",
        ]
    return targets
