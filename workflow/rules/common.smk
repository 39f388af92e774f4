# Config validation and the functions that turn config into file lists.
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

PYTHON = shlex.quote(sys.executable)
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
        "--data-dir", config.get("data_dir", "resources/data"),
        "--device", config.get("device", "auto"),
        "--threads", str(config.get("threads", 1)),
        "--checkpoint-minutes", str(config.get("checkpoint_minutes", 10)),
        "--divergence-loss", str(config.get("divergence_loss", 1000)),
    ]  # fmt: skip
    return parse_run_key(run).shell_args() + " " + shlex.join(operational)


def all_targets():
    targets = []
    for name in TABLE_EXPERIMENTS:
        targets += [
            f"figures/{name}.pdf",
            f"figures/{name}.md",
            f"results/tables/{name}.csv",
        ]
    return targets
