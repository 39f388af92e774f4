# rbd: regenerate the tables and figures of Gressmann et al. (NeurIPS 2020).
#   snakemake --cores 8 figures/table1.pdf                              (paper preset)
#   snakemake --cores 2 --configfile=config/quick.yaml figures/table1.pdf  (CPU preset)
import os
import time

from snakemake.utils import min_version

min_version("9.0")

WORKFLOW_START = time.time()


# The configuration: a complete --configfile=PATH is used as it is; otherwise the given
# keys (--config preset=quick, override files) are merged over the named preset's file
# (config/<preset>.yaml; default paper, config/config.yaml); then validated against
# config/schemas/config.schema.yaml with every default filled in. One call:
# rbd.workflow.config.resolve_config.
from snakemake.exceptions import WorkflowError

from rbd.workflow.config import ConfigError, resolve_config

try:
    _resolved = resolve_config(dict(config), workflow.basedir)
except ConfigError as err:
    raise WorkflowError(f"invalid configuration: {err}") from None
config.clear()
config.update(_resolved)


include: "workflow/rules/common.smk"
include: "workflow/rules/jobs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/plots.smk"


rule all:
    default_target: True
    input:
        all_targets(),


onstart:
    write_train_launcher(warm_socket=start_warm_start())
    print(
        f"rbd: preset {config['preset']!r}, {len(ALL_RUNS)} training runs in the plan"
    )


onsuccess:
    stop_warm_start()
    print("rbd: done. Tables in results/tables/ and figures/; figures in figures/")


onerror:
    stop_warm_start()
    from rbd.workflow.snakemake import failed_job_logs

    failed = failed_job_logs("logs", since=WORKFLOW_START)
    print(
        "rbd: a job failed. Its log:"
        if failed
        else "rbd: a job failed; see the rule's log: above"
    )
    for path in failed[:5]:
        print(f"    {path}")
