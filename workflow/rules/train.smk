# One job per training run; the run key in the path holds all its settings.


rule train:
    input:
        data=lambda wildcards: data_ready(wildcards.run),
    output:
        run="results/runs/{run}/run.json",
        metrics="results/runs/{run}/metrics.csv",
    log:
        "logs/train/{run}.log",
    benchmark:
        "logs/benchmarks/train/{run}.tsv"
    priority: train_priority
    conda:
        "../envs/train.yaml"
    threads: train_threads
    resources:
        runtime=train_runtime,
        mem_mb=train_mem_mb,
        gpu=train_gpus,
        # One job on one node with a CPU per thread of each of the W workers.
        nodes=1,
        tasks=train_tasks,
        cpus_per_task=train_threads,
    params:
        # How to run (common.smk, TRAIN_LAUNCHER): a fixed path, so that operational
        # settings never rerun a finished job; what to run: the run key's flags.
        launcher=TRAIN_LAUNCHER,
        args=lambda wildcards: train_args(wildcards.run),
        out=lambda wildcards: f"results/runs/{wildcards.run}",
    shell:
        "sh {params.launcher:q} {params.args} --out {params.out:q} > {log:q} 2>&1"
