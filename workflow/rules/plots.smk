# Every experiment's figure from its tidy table (a table kind's is its table drawn as a
# page), the paper beside ours, and the best rates of a sweep.


# Small jobs: they run on the machine that runs Snakemake, never in a cluster queue.
localrules:
    plot_figure,
    plot_paper_vs_ours,
    pick_learning_rates,


rule plot_figure:
    input:
        csv="results/tables/{experiment}.csv",
        # A sweep's figure rings the best rates: build their YAML with it.
        best=lambda wildcards: (
            [f"results/tables/{wildcards.experiment}_best.yaml"]
            if wildcards.experiment in SWEEP_EXPERIMENTS
            else []
        ),
        # A table's page comes with its Markdown and LaTeX (figures/table1.pdf builds all).
        table=lambda wildcards: (
            [f"figures/{wildcards.experiment}.md"]
            if wildcards.experiment in TABLE_EXPERIMENTS
            else []
        ),
    output:
        pdf=report(
            "figures/{experiment}.pdf",
            caption="../report/experiment.rst",
            category="Figures",
            labels={"experiment": "{experiment}", "format": "PDF"},
        ),
    log:
        "logs/plots/{experiment}.log",
    wildcard_constraints:
        experiment=one_of(EXPERIMENT_KINDS),
    conda:
        "../envs/tables.yaml"
    params:
        python=PYTHON,
        kind=lambda wildcards: EXPERIMENT_KINDS[wildcards.experiment],
        description=lambda wildcards: description(wildcards.experiment),
        caption=lambda wildcards: rst_escape(description(wildcards.experiment)),
        n_runs=lambda wildcards: len(RUNS[wildcards.experiment]),
    shell:
        "{params.python} -m rbd plot --experiment {wildcards.experiment:q} "
        "--kind {params.kind:q} --description {params.description:q} "
        "--csv {input.csv:q} --pdf {output.pdf:q} > {log:q} 2>&1"


rule plot_paper_vs_ours:
    input:
        csvs=paper_vs_ours_tables,
    output:
        pdf=report(
            "figures/paper_vs_ours.pdf",
            caption="../report/paper_vs_ours.rst",
            category="Figures",
            labels={"experiment": "paper_vs_ours", "format": "PDF"},
        ),
    log:
        "logs/plots/paper_vs_ours.log",
    conda:
        "../envs/tables.yaml"
    params:
        python=PYTHON,
    shell:
        "{params.python} -m rbd paper-vs-ours --out {output.pdf:q} {input.csvs:q} > {log:q} 2>&1"


rule pick_learning_rates:
    input:
        csv="results/tables/{experiment}.csv",
    output:
        yaml=report(
            "results/tables/{experiment}_best.yaml",
            caption="../report/best_rates.rst",
            category="Learning rates",
            labels={"experiment": "{experiment}", "format": "YAML"},
        ),
    log:
        "logs/plots/{experiment}.pick_lr.log",
    wildcard_constraints:
        experiment=one_of(SWEEP_EXPERIMENTS),
    conda:
        "../envs/tables.yaml"
    params:
        python=PYTHON,
    shell:
        "{params.python} -m rbd pick-lr --csv {input.csv:q} --out {output.yaml:q} > {log:q} 2>&1"
