# Aggregation of runs into tidy tables (every experiment), and the Markdown and LaTeX
# tables of the kinds that have one (rbd.report.kinds).


# Small jobs: they run on the machine that runs Snakemake, never in a cluster queue.
localrules:
    aggregate_experiment,
    render_table,


rule aggregate_experiment:
    input:
        runs=lambda wildcards: run_files(wildcards.experiment),
    output:
        csv="results/tables/{experiment}.csv",
    log:
        "logs/tables/{experiment}.aggregate.log",
    conda:
        "../envs/tables.yaml"
    params:
        python=PYTHON,
        kind=lambda wildcards: EXPERIMENT_KINDS[wildcards.experiment],
    shell:
        "{params.python} -m rbd aggregate --experiment {wildcards.experiment:q} "
        "--kind {params.kind:q} --out {output.csv:q} {input.runs:q} > {log:q} 2>&1"


rule render_table:
    input:
        csv="results/tables/{experiment}.csv",
    output:
        md=report(
            "figures/{experiment}.md",
            caption="../report/experiment.rst",
            category="Tables",
            labels={"experiment": "{experiment}", "format": "Markdown"},
        ),
        tex="figures/{experiment}.tex",
    log:
        "logs/tables/{experiment}.render.log",
    wildcard_constraints:
        experiment=one_of(TABLE_EXPERIMENTS),
    conda:
        "../envs/tables.yaml"
    params:
        python=PYTHON,
        kind=lambda wildcards: EXPERIMENT_KINDS[wildcards.experiment],
        description=lambda wildcards: description(wildcards.experiment),
        caption=lambda wildcards: rst_escape(description(wildcards.experiment)),
        n_runs=lambda wildcards: len(RUNS[wildcards.experiment]),
    shell:
        "{params.python} -m rbd render --experiment {wildcards.experiment:q} "
        "--kind {params.kind:q} --description {params.description:q} --csv {input.csv:q} "
        "--md {output.md:q} --tex {output.tex:q} > {log:q} 2>&1"
