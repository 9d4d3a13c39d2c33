# Stage 6: every cell's scored records -> tidy tables + paper-style Markdown tables (latentmas.report.aggregate).


rule aggregate:
    input:
        all_cell_scores(),
    output:
        **{Path(n).name.replace(".", "_"): table_output(n) for n in TABLE_FILES},
    log:
        job_log("aggregate", None),
    conda:
        conda_env("cpu")
    script:
        "../scripts/aggregate.py"
