# Stage 6: every cell's scored records -> tidy tables + paper-style Markdown tables (latentmas.aggregate).

# The fixed file names `latentmas aggregate` writes (latentmas.aggregate.OUTPUT_FILES; a test keeps them in sync).
TABLE_FILES = ("cells.parquet", "cells.csv", "per_seed.parquet", "per_seed.csv", "table_accuracy.md",
               "table_tokens.md", "table_speed.md", "summary.json")
TABLE_CAPTIONS = {
    "cells.csv": "../report/cells.rst",
    "per_seed.csv": "../report/per_seed.rst",
    "table_accuracy.md": "../report/table_accuracy.rst",
    "table_tokens.md": "../report/table_tokens.rst",
    "table_speed.md": "../report/table_speed.rst",
}


def table_output(name):
    path = f"results/tables/{name}"
    if name in TABLE_CAPTIONS:
        return report(path, caption=TABLE_CAPTIONS[name], category="Tables")
    return path


rule aggregate:
    input:
        all_cell_scores(),
    output:
        **{Path(n).name.replace(".", "_"): table_output(n) for n in TABLE_FILES},
    log:
        "logs/aggregate.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/aggregate.py"
