# Stage 7: figures from the cells table (latentmas.report.figures), then `publish`: the paper-ready copy under reports/.


rule figures:
    input:
        table="results/tables/cells.parquet",
    output:
        **{
            f"{name}_png": report(
                f"results/figures/{name}.png", caption=f"../report/fig_{name}.rst", category="Figures"
            )
            for name in FIGURE_NAMES
        },
        **{f"{name}_svg": f"results/figures/{name}.svg" for name in FIGURE_NAMES},
    log:
        "logs/figures.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/figures.py"


rule publish:
    input:
        [f"results/tables/{n}" for n in TABLE_FILES]
        + [f"results/figures/{n}.{ext}" for n in FIGURE_NAMES for ext in ("png", "svg")],
    output:
        PUBLISHED,
    log:
        "logs/publish.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/publish.py"
