# One job per training run; the run key in the path holds all its settings.


rule train:
    input:
        data=lambda wildcards: data_ready(wildcards.run),
    output:
        run="results/runs/{run}/run.json",
        metrics="results/runs/{run}/metrics.csv",
    log:
        "logs/train/{run}.log",
    conda:
        "../../environment.yml"
    threads: config.get("threads", 1)
    params:
        python=PYTHON,
        args=lambda wildcards: train_args(wildcards.run),
        out=lambda wildcards: f"results/runs/{wildcards.run}",
    shell:
        "{params.python} -m rbd train {params.args} --out {params.out:q} > {log:q} 2>&1"
