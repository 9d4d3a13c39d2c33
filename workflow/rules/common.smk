# Config loading, validation, cell expansion and input/param/resource functions shared by every stage.
#
# Nothing here touches the network or the filesystem beyond reading the config files and the schema: the DAG of the
# full paper grid is planned without downloading a byte.

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir)))  # the package from this checkout, installed or not


# ---------------------------------------------------------------------------------------------------------------------
# 1-2. Validation (messages name the key path) and cell expansion live in the package (latentmas.pipeline.experiment), so
#      `latentmas run --config FILE --cell ID` sees exactly the cells and settings the pipeline runs.
#      Cell id = {model}/{task}/{variant}/seed{seed}; variant = baseline | text_mas-{arch} |
#      latent_mas-{arch}-k{steps}-{realign|norealign}[-mem_{memory}]  (memory suffix only when not "all")
#      [-{control}]  (controls beside latent_mas cells: docs/CONTROLS.md)
# ---------------------------------------------------------------------------------------------------------------------
from latentmas.pipeline import experiment as _experiment

SCHEMA_PATH = _experiment.SCHEMA_PATH  # package data: latentmas/schemas/
RESOURCE_DEFAULTS = _experiment.RESOURCE_DEFAULTS

try:
    _experiment.validate_config(config, SCHEMA_PATH)
except _experiment.ConfigError as _err:
    raise WorkflowError(str(_err)) from None


def latent_settings(model: str) -> dict:
    return _experiment.latent_settings(config, model)


expand_cells = _experiment.expand_cells
CELLS = expand_cells(config)


def cell_of(wc) -> dict:
    cid = f"{wc.model}/{wc.task}/{wc.variant}/seed{wc.seed}"
    try:
        return CELLS[cid]
    except KeyError:
        raise WorkflowError(f"{cid} is not a cell of this config")


def n_shards(task: str) -> int:
    return config["tasks"][task]["n_shards"]


def shard_names(task: str) -> list:
    n = n_shards(task)
    return [f"shard-{i}-of-{n}" for i in range(n)]


def models_needing_align() -> list:
    return sorted({c["model"] for c in CELLS.values() if c["method"] == "latent_mas" and _experiment.needs_align(c)})


# ---------------------------------------------------------------------------------------------------------------------
# 3. Paths
# ---------------------------------------------------------------------------------------------------------------------
model_dir = _experiment.model_dir


def model_sentinel(model: str) -> str:
    return f"resources/models/{model}/.fetched"


data_file = _experiment.data_file
align_file = _experiment.align_file


def cell_scores(cell_id: str) -> str:
    return f"results/score/{cell_id}/all.jsonl"


def all_cell_scores() -> list:
    return [cell_scores(cid) for cid in sorted(CELLS)]


# The fixed file names `latentmas aggregate` / `latentmas figures` write (latentmas.report.aggregate.OUTPUT_FILES,
# latentmas.report.figures.FIGURES; tests/test_workflow.py keeps them in sync).
TABLE_FILES = ("cells.parquet", "cells.csv", "per_seed.parquet", "per_seed.csv", "table_accuracy.md",
               "table_tokens.md", "table_speed.md", "summary.json")
TABLE_CAPTIONS = {
    "cells.csv": "../report/cells.rst",
    "per_seed.csv": "../report/per_seed.rst",
    "table_accuracy.md": "../report/table_accuracy.rst",
    "table_tokens.md": "../report/table_tokens.rst",
    "table_speed.md": "../report/table_speed.rst",
}
FIGURE_NAMES = ("accuracy", "tokens", "speedup", "latent_steps")
PUBLISHED = [f"reports/tables/{n}" for n in TABLE_FILES] + [
    f"reports/figures/{n}.{ext}" for n in FIGURE_NAMES for ext in ("png", "svg")
]


def table_output(name):
    path = f"results/tables/{name}"
    if name in TABLE_CAPTIONS:
        return report(path, caption=TABLE_CAPTIONS[name], category="Tables")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# 4. Input functions and params, each narrowed to the job's own slice of the config (Snakemake's `params` rerun
#    trigger then reruns exactly the jobs whose slice changed).
# ---------------------------------------------------------------------------------------------------------------------
def infer_inputs(wc) -> dict:
    c = cell_of(wc)
    ins = {"model": model_sentinel(c["model"]), "data": data_file(c["task"])}
    if c["method"] == "latent_mas" and _experiment.needs_align(c):
        ins["align"] = align_file(c["model"])
    return ins


def infer_settings(wc) -> dict:
    """Everything `latentmas run` is told besides file paths; recorded by Snakemake as the job's params."""
    return _experiment.cell_settings(config, cell_of(wc), int(wc.shard), int(wc.nshards))


def model_params(wc) -> dict:
    m = config["models"][wc.model]
    return {"spec": m["spec"], "name": wc.model}


def align_params(wc) -> dict:
    p = {"device": config["models"][wc.model]["device"]}
    lam = latent_settings(wc.model).get("ridge_lambda")
    if lam is not None:
        p["ridge_lambda"] = lam
    return p


def data_params(wc) -> dict:
    return {"source": config["tasks"][wc.task]["source"]}


# ---------------------------------------------------------------------------------------------------------------------
# 5. Resources: built-in defaults < resources.default < resources.<rule> < models.<m>.resources.{default,<rule>}
#    (model-level entries apply to that model's align/infer jobs only).
# ---------------------------------------------------------------------------------------------------------------------
def rule_resources(rule: str, model=None) -> dict:
    out = {}
    out.update(RESOURCE_DEFAULTS["default"])
    out.update(RESOURCE_DEFAULTS.get(rule, {}))
    res = config.get("resources", {})
    out.update(res.get("default", {}))
    out.update(res.get(rule, {}))
    if model is not None:
        mres = config["models"][model].get("resources", {})
        out.update(mres.get("default", {}))
        out.update(mres.get(rule, {}))
    out.setdefault("cpus_per_task", out["threads"])  # SLURM gets as many CPUs as the job runs threads
    return out


def _resource_keys(rule: str, per_model: bool) -> set:
    keys = set(rule_resources(rule))
    if per_model:
        for m in config["models"]:
            keys |= set(rule_resources(rule, m))
    keys.discard("threads")
    return keys


def resources_for(rule: str, per_model: bool = False) -> dict:
    """`resources:` kwargs for a rule: one callable per key (None = unset for that job)."""

    def getter(key):
        if per_model:
            return lambda wc: rule_resources(rule, wc.model).get(key)
        return lambda wc: rule_resources(rule).get(key)

    return {k: getter(k) for k in sorted(_resource_keys(rule, per_model))}


def threads_for(rule: str, per_model: bool = False):
    if per_model:
        return lambda wc: rule_resources(rule, wc.model)["threads"]
    return rule_resources(rule)["threads"]


def conda_env(kind=None) -> str:
    return f"../envs/{kind or config['conda_env']}.yaml"


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    task=r"[a-z0-9_]+",
    variant=r"[a-z0-9_.-]+",
    seed=r"\d+",
    shard=r"\d+",
    nshards=r"\d+",
