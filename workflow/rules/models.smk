# Stage 2: one model folder per model name. The output is a sentinel file inside the folder, written only after
# `latentmas fetch-model` has built the folder (beside it, then renamed into place): a failed or interrupted fetch
# leaves no sentinel, so Snakemake reruns it, and the large folder itself is never an output Snakemake would delete.


rule fetch_model:
    output:
        sentinel=model_sentinel("{model}"),
    params:
        settings=model_params,
    log:
        job_log("fetch_model", "{model}"),
    threads: threads_for("fetch_model")
    resources:
        **resources_for("fetch_model"),
    conda:
        conda_env("cpu")
    script:
        "../scripts/fetch_model.py"
