# The experiments: their runs and kinds (rbd.report.kinds), and the files they make.
import os
import sys

from snakemake.exceptions import WorkflowError

from rbd.report.comparison import PAPER_TABLES, VERIFICATION_CSV
from rbd.report.kinds import KINDS, outputs
from rbd.report.tables import rst_escape
from rbd.workflow.config import experiment_runs, in_default_target
from rbd.workflow.snakemake import import_package_from

# Jobs import the rbd package of this checkout (the absolute path of the directory of
# the Snakefile), whatever else is installed (jobs.smk: how they run).
RBD_ROOT = os.path.abspath(workflow.basedir)
import_package_from(RBD_ROOT)
RUNS = experiment_runs(config)
ALL_RUNS = sorted({spec.key for runs in RUNS.values() for spec in runs})


report: "../report/workflow.rst"


# Experiment -> its kind's name, and the experiments each rule serves.
EXPERIMENT_KINDS = {name: exp["kind"] for name, exp in config["experiments"].items()}
TABLE_EXPERIMENTS = [
    n for n, k in EXPERIMENT_KINDS.items() if KINDS[k].table is not None
]
SWEEP_EXPERIMENTS = [n for n, k in EXPERIMENT_KINDS.items() if KINDS[k].best_rates]


def one_of(names):
    """A wildcard regex matching exactly these names (and nothing when there are none)."""
    return "|".join(names) if names else "(?!)"


wildcard_constraints:
    experiment="[a-z][a-z0-9_]*",
    run=r"[a-z0-9_]+/[a-z0-9]+/[a-z]+/d[0-9]+_[a-z0-9-]+/[^/]+/seed[0-9]+",


def run_files(experiment):
    """run.json of every run the experiment needs."""
    return [f"results/runs/{spec.key}/run.json" for spec in RUNS[experiment]]


def description(experiment):
    """What the experiment runs, in words (its config description, else its name)."""
    return config["experiments"][experiment].get("description", experiment)


def experiment_targets(name):
    """The files that make up experiment `name` (rbd.report.kinds.outputs)."""
    return outputs(name, EXPERIMENT_KINDS[name])


def paper_vs_ours_tables(wildcards):
    """The CSVs figures/paper_vs_ours.pdf draws ours from (config key `paper_vs_ours`):
    the committed verification summary of this checkout, or this run's Table 1 and 2."""
    if config["paper_vs_ours"] == "verification":
        return [os.path.join(RBD_ROOT, VERIFICATION_CSV)]
    names = [name for name in PAPER_TABLES if name in EXPERIMENT_KINDS]
    if not names:
        raise WorkflowError(
            "paper_vs_ours: results needs the experiment table1 or table2 in the config"
        )
    return [f"results/tables/{name}.csv" for name in names]


def all_targets():
    """Every experiment except the opt-in ones (sweeps, `opt_in: true`)."""
    return [
        target
        for name in EXPERIMENT_KINDS
        if in_default_target(config, name)
        for target in experiment_targets(name)
    ]
