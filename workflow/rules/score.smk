# Stage 5: score each shard (answer extraction / sandboxed code execution), then concatenate a cell's shards.


rule score:
    input:
        records="results/infer/{model}/{task}/{variant}/seed{seed}/shard-{shard}-of-{nshards}.jsonl",
        data="results/data/{task}.parquet",
    output:
        "results/score/{model}/{task}/{variant}/seed{seed}/shard-{shard}-of-{nshards}.jsonl",
    params:
        extraction=config["scoring"]["extraction"],
    log:
        "logs/score/{model}/{task}/{variant}/seed{seed}/shard-{shard}-of-{nshards}.log",
    threads: threads_for("score")
    resources:
        **resources_for("score"),
    conda:
        conda_env("cpu")
    script:
        "../scripts/score.py"


rule merge_cell:
    input:
        lambda wc: expand(
            "results/score/{cell}/{shard}.jsonl",
            cell=cell_of(wc)["id"],
            shard=shard_names(wc.task),
        ),
    output:
        "results/score/{model}/{task}/{variant}/seed{seed}/all.jsonl",
    log:
        "logs/merge_cell/{model}/{task}/{variant}/seed{seed}.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/merge_cell.py"
