# Config validation and the functions that turn config into file lists.
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from rbd.config import (
    OPT_IN_KINDS,
    TABLE_KINDS,
    ConfigError,
    experiment_runs,
    validate_config,
)
from rbd.runs import parse_run_key
from rbd.workflow import import_package_from

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
# Jobs import the rbd package that sits beside this Snakefile, whatever else is installed.
import_package_from(workflow.basedir)
# Shared cluster storage: RBD_DATA_DIR overrides the config's data_dir.
DATA_DIR = os.environ.get("RBD_DATA_DIR") or config.get("data_dir", "resources/data")
# Data sets that ship inside a package and need no download step.
BUNDLED_DATASETS = {"mnist5k"}
RUNS = experiment_runs(config)
ALL_RUNS = sorted({spec.key for runs in RUNS.values() for spec in runs})


report: "../report/workflow.rst"


KINDS = {name: exp["kind"] for name, exp in config["experiments"].items()}
TABLE_EXPERIMENTS = [name for name, kind in KINDS.items() if kind in TABLE_KINDS]
FIGURE_EXPERIMENTS = [name for name, kind in KINDS.items() if kind not in TABLE_KINDS]
SWEEP_EXPERIMENTS = [name for name, kind in KINDS.items() if kind == "lr_sweep"]


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


def description(experiment):
    """What the experiment runs, in words (its config description, else its name)."""
    return config["experiments"][experiment].get("description", experiment)


def experiment_targets(name):
    """The files that make up experiment `name`."""
    targets = [f"figures/{name}.pdf", f"results/tables/{name}.csv"]
    if name in TABLE_EXPERIMENTS:
        targets += [f"figures/{name}.md", f"figures/{name}.tex"]
    if name in SWEEP_EXPERIMENTS:
        targets.append(f"results/tables/{name}_best.yaml")
    return targets


def all_targets():
    """Every experiment except the opt-in kinds (learning-rate sweeps)."""
    return [
        target
        for name, kind in KINDS.items()
        if kind not in OPT_IN_KINDS
        for target in experiment_targets(name)
    ]
