# Stage 5: score each shard (answer extraction / sandboxed code execution), then concatenate a cell's shards.


rule score:
    input:
        records=INFER_FILE,
        data=data_file("{task}"),
    output:
        SCORE_FILE,
    params:
        extraction=config["scoring"]["extraction"],
    log:
        job_log("score"),
    threads: threads_for("score")
    resources:
        **resources_for("score"),
    conda:
        conda_env("cpu")
    script:
        "../scripts/score.py"


rule merge_cell:
    input:
        shard_scores,
    output:
        cell_scores(CELL_PATTERN),
    log:
        job_log("merge_cell", CELL_PATTERN),
    conda:
        conda_env("cpu")
    script:
        "../scripts/merge_cell.py"
