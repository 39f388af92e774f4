# rbd: regenerate the tables and figures of Gressmann et al. (NeurIPS 2020).
#   snakemake --cores 8 figures/table1.pdf                              (paper preset)
#   snakemake --cores 2 --configfile=config/quick.yaml figures/table1.pdf  (CPU preset)
import os
import time

from snakemake.utils import min_version

min_version("9.0")

WORKFLOW_START = time.time()


# A --configfile that names a preset replaces the paper preset instead of being
# merged into it key by key (which would leak the paper's experiments into it).
if not config.get("preset"):

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/plots.smk"


rule all:
    default_target: True
    input:
        all_targets(),


onstart:
    print(
        f"rbd: preset {config['preset']!r}, {len(ALL_RUNS)} training runs in the plan"
    )


onsuccess:
    print("rbd: done. Tables in results/tables/ and figures/; figures in figures/")


onerror:
    from rbd.workflow import failed_job_logs

    failed = failed_job_logs("logs", since=WORKFLOW_START)
    print(
        "rbd: a job failed. Its log:"
        if failed
        else "rbd: a job failed; see the rule's log: above"
    )
    for path in failed[:5]:
        print(f"    {path}")
