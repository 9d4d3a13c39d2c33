# Stage 7: figures from the settings table (latentmas.report.figures), then `publish`: the paper-ready copy under reports/.


rule figures:
    input:
        table=f"{TABLES_DIR}/settings.parquet",
    output:
        **{
            f"{name}_png": report(
                f"{FIGURES_DIR}/{name}.png", caption=f"../report/fig_{name}.rst", category="Figures"
            )
            for name in FIGURE_NAMES
        },
        **{f"{name}_svg": f"{FIGURES_DIR}/{name}.svg" for name in FIGURE_NAMES},
    log:
        job_log("figures", None),
    conda:
        conda_env("cpu")
    script:
        "../scripts/figures.py"


rule publish:
    input:
        [f"{TABLES_DIR}/{n}" for n in TABLE_FILES]
        + [f"{FIGURES_DIR}/{n}.{ext}" for n in FIGURE_NAMES for ext in FIGURE_FORMATS],
    output:
        PUBLISHED,
    log:
        job_log("publish", None),
    conda:
        conda_env("cpu")
    script:
        "../scripts/publish.py"
