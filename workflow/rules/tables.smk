# Aggregation of runs into tidy tables, and their rendering.


rule aggregate_table:
    input:
        runs=lambda wildcards: run_files(wildcards.experiment),
    output:
        csv="results/tables/{experiment}.csv",
    log:
        "logs/tables/{experiment}.aggregate.log",
    conda:
        "../../environment.yml"
    params:
        python=PYTHON,
    shell:
        "{params.python} -m rbd aggregate --experiment {wildcards.experiment:q} "
        "--out {output.csv:q} {input.runs:q} > {log:q} 2>&1"


rule render_table:
    input:
        csv="results/tables/{experiment}.csv",
    output:
        pdf="figures/{experiment}.pdf",
        md="figures/{experiment}.md",
        tex="figures/{experiment}.tex",
    log:
        "logs/tables/{experiment}.render.log",
    conda:
        "../../environment.yml"
    params:
        python=PYTHON,
    shell:
        "{params.python} -m rbd render --experiment {wildcards.experiment:q} --csv {input.csv:q} "
        "--pdf {output.pdf:q} --md {output.md:q} --tex {output.tex:q} > {log:q} 2>&1"
