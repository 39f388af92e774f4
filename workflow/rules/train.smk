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
    threads: train_threads
    resources:
        runtime=train_runtime,
        mem_mb=train_mem_mb,
        gpu=train_gpus,
        # One task on one node with a CPU per thread of each of the W workers.
        tasks=train_tasks,
        cpus_per_task=train_threads,
    params:
        python=PYTHON,
        args=lambda wildcards: train_args(wildcards.run),
        out=lambda wildcards: f"results/runs/{wildcards.run}",
    shell:
        "{params.python} -m rbd train {params.args} --out {params.out:q} > {log:q} 2>&1"
