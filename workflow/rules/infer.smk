# Stage 4: one job per cell x shard. The runner resumes an existing records file, so the job writes to
# `<output>.partial` (not an output: Snakemake never deletes it when a job fails or is killed) and renames it onto
# the output only after `latentmas run` returned 0. See docs/WORKFLOW.md, "Resuming inference".


rule infer:
    input:
        unpack(infer_inputs),
    output:
        INFER_FILE,
    params:
        settings=infer_settings,
    log:
        job_log("infer"),
    threads: threads_for("infer", per_model=True)
    resources:
        **resources_for("infer", per_model=True),
    conda:
        conda_env()
    script:
        "../scripts/infer.py"
