# `snakemake bench`: the performance benchmark of the first configured model (latentmas bench, docs/BENCH.md).
# Not part of `all`: it measures the machine, not the experiment, and wants an otherwise idle machine.
# Extra `latentmas bench` flags (e.g. --quick) come from the LATENTMAS_BENCH_ARGS environment variable.
import os

BENCH_MODEL = next(iter(config["models"]))


rule bench:
    input:
        model=model_sentinel(BENCH_MODEL),
    output:
        json="reports/bench/bench.json",
        md=report("reports/bench/bench.md", caption="../report/bench.rst", category="Performance"),
        png=report("reports/bench/bench.png", caption="../report/bench.rst", category="Performance"),
    params:
        device=config["models"][BENCH_MODEL]["device"],
        dtype=config["models"][BENCH_MODEL]["dtype"],
        extra=os.environ.get("LATENTMAS_BENCH_ARGS", ""),
    log:
        "logs/bench.log",
    threads: lambda wildcards: workflow.cores  # deferred: `snakemake --report` defines no --cores
    conda:
        conda_env()
    shell:
        "latentmas bench $(dirname {input.model}) --device {params.device} --dtype {params.dtype} "
        "--threads {threads} --out-dir $(dirname {output.json}) {params.extra} > {log} 2>&1"
