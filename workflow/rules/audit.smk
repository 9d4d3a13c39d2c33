# Stage 8: see inside the runs — latent health table + lens figure (latentmas.report.latent_health) and audit pages
# (latentmas.report.audit): per cell the first correct and the first incorrect sample, latent_mas cells also side by
# side with another method; every page is report()-tagged (a pure-HTML report cannot hold a directory).
from latentmas.report.audit import partner_of as _audit_partner

LATENT_HEALTH_TABLES = ("latent_health.csv", "latent_health.md")
LATENT_HEALTH_FIGURES = ("latent_lens.png", "latent_lens.svg")


# (cell id, page path) of every audit page: the same set latentmas.report.audit.write_site writes
AUDIT_PAGES = [
    (cid, f"results/audit/{cid}/{kind}.html")
    for cid in sorted(CELLS)
    for kind in ("correct", "incorrect", "compare")
    if kind != "compare" or _audit_partner(CELLS[cid], CELLS)
]


AUDIT_OUTPUTS = (
    [f"results/tables/{n}" for n in LATENT_HEALTH_TABLES]
    + [f"results/figures/{n}" for n in LATENT_HEALTH_FIGURES]
    + ["results/audit/index.html"]
    + [page for _, page in AUDIT_PAGES]
)


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
        report("results/audit/index.html", caption="../report/audit.rst", category="Audit pages"),
        [
            report(page, caption="../report/audit.rst", category="Audit pages", subcategory=cid)
            for cid, page in AUDIT_PAGES
        ],
    log:
        "logs/audit_pages.log",
    conda:
        conda_env("cpu")
    script:
        "../scripts/audit_pages.py"
