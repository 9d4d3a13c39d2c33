# latentmas: LatentMAS vs text multi-agent vs single-agent, as a Snakemake pipeline.
# Stages and file layout: docs/WORKFLOW.md. Contracts between stages: docs/DESIGN.md.
#
#   snakemake --cores all                                 # the embedded demo (config/config.yaml), offline, CPU
#   snakemake --configfile config/paper.yaml --profile workflow/profiles/slurm   # the paper grid on a cluster
#   snakemake --report reports/report.html                # self-contained HTML report of the last run

from snakemake.utils import min_version

min_version("9.0")


# `--configfile X` replaces this default instead of being merged into it (a merge would leave the demo's model and
# tasks inside every other config's grid); `--config key=value` still updates whichever config is in use.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/audit.smk"


localrules:
    all,
    fetch_dataset,
    fetch_model,
    merge_cell,
    aggregate,
    figures,
    publish,
    latent_health,
    audit_pages,


rule all:
    input:
        PUBLISHED,
        AUDIT_OUTPUTS,
    default_target: True
