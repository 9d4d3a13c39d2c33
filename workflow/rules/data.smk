# Stage 1: one parquet per task (the test split in the common schema of docs/DESIGN.md) + its .sha256 sidecar.


rule fetch_dataset:
    output:
        data=data_file("{task}"),
        sha=data_checksum_file("{task}"),
    params:
        settings=data_params,
    log:
        job_log("fetch_dataset", "{task}"),
    threads: threads_for("fetch_dataset")
    resources:
        **resources_for("fetch_dataset"),
    conda:
        conda_env("cpu")
    script:
        "../scripts/fetch_dataset.py"
