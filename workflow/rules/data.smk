# Data sets are fetched once, on the machine that runs Snakemake (a cluster's
# login node has internet, its compute nodes often do not); training jobs only read.
# A data set with a folder in config `data_source` is installed from it instead.


localrules:
    download_data,


rule download_data:
    output:
        ready=f"{DATA_DIR}/.rbd/{{dataset}}.ready",
    log:
        "logs/download/{dataset}.log",
    conda:
        "../envs/train.yaml"
    params:
        python=PYTHON,
        data_dir=lambda wildcards, output: os.path.dirname(
            os.path.dirname(output.ready)
        ),
        source=lambda wildcards: (
            ["--from", DATA_SOURCE[wildcards.dataset]]
            if wildcards.dataset in DATA_SOURCE
            else []
        ),
    shell:
        "{params.python} -m rbd download --dataset {wildcards.dataset:q} "
        "--data-dir {params.data_dir:q} {params.source:q} > {log:q} 2>&1 "
        "&& touch {output.ready:q}"
