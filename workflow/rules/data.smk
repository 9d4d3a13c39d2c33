# Stage 1: one parquet per task (the test split in the common schema of docs/DESIGN.md) + its .sha256 sidecar.


rule fetch_dataset:
    output:
        data="results/data/{task}.parquet",
        sha="results/data/{task}.parquet.sha256",
    params:
        settings=data_params,
    log:
        "logs/fetch_dataset/{task}.log",
    threads: threads_for("fetch_dataset")
    resources:
        **resources_for("fetch_dataset"),
    conda:
        conda_env("cpu")
    script:
        "../scripts/fetch_dataset.py"
