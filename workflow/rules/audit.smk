# Stage 8: see inside the runs — latent health table + lens figures (latentmas.report.latent_health) and one audit
# page per sample picked from every cell (latentmas.report.audit), linked from the report.

LATENT_HEALTH_TABLES = ("latent_health.csv", "latent_health.md")
LATENT_HEALTH_FIGURES = ("latent_lens.png", "latent_lens.svg")
AUDIT_OUTPUTS = [f"results/tables/{n}" for n in LATENT_HEALTH_TABLES] + [
    f"results/figures/{n}" for n in LATENT_HEALTH_FIGURES
] + ["results/audit"]


rule latent_health:
    input:
        all_cell_scores(),
    output:
        csv=report("results/tables/latent_health.csv", caption="../report/latent_health.rst", category="Tables"),
        md="results/tables/latent_health.md",
        png=report("results/figures/latent_lens.png", caption="../report/fig_latent_lens.rst", category="Figures"),
        svg="results/figures/latent_lens.svg",
    log:
        "logs/latent_health.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/latent_health.py"


rule audit_pages:
    input:
        all_cell_scores(),
    output:
        report(directory("results/audit"), htmlindex="index.html", caption="../report/audit.rst",
               category="Audit pages"),
    log:
        "logs/audit_pages.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/audit_pages.py"
