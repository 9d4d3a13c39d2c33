# Stage 6b: every cell's scored records -> the paired significance table (latentmas.report.significance): LatentMAS vs
# TextMAS, the single agent and each control run beside it (docs/CONTROLS.md), then its copy under reports/tables/.

SIGNIFICANCE_FILES = ("significance.md", "significance.csv")
SIGNIFICANCE_PUBLISHED = [f"reports/tables/{n}" for n in SIGNIFICANCE_FILES]


rule significance:
    input:
        all_cell_scores(),
    output:
        md=report("results/tables/significance.md", caption="../report/significance.rst", category="Tables"),
        csv="results/tables/significance.csv",
    log:
        "logs/significance.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/significance.py"


rule publish_significance:
    input:
        [f"results/tables/{n}" for n in SIGNIFICANCE_FILES],
    output:
        SIGNIFICANCE_PUBLISHED,
    log:
        "logs/publish_significance.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/publish.py"
