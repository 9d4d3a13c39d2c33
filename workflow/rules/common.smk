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
# ---------------------------------------------------------------------------------------------------------------------
from latentmas import contracts as _contracts
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


def models_needing_align() -> list:
    return sorted({c["model"] for c in CELLS.values() if c["method"] == "latent_mas" and c["realign"]})


# ---------------------------------------------------------------------------------------------------------------------
# 3. Paths: all from latentmas.contracts (the package writes and reads the same names)
# ---------------------------------------------------------------------------------------------------------------------
model_dir = _contracts.model_dir
model_sentinel = _contracts.model_sentinel
data_file = _contracts.data_file
data_checksum_file = _contracts.data_checksum_file
align_file = _contracts.align_file
cell_scores = _contracts.cell_scores
CELL_PATTERN = "{model}/{task}/{variant}/seed{seed}"
INFER_FILE = _contracts.infer_file(CELL_PATTERN, "{shard}", "{nshards}")
SCORE_FILE = _contracts.score_file(CELL_PATTERN, "{shard}", "{nshards}")


def job_log(stage: str, name: str = f"{CELL_PATTERN}/{_contracts.SHARD_NAME}") -> str:
    return _contracts.log_file(stage, name)


def shard_scores(wc) -> list:
    """The scored shards of one cell, in shard order (merge_cell's input)."""
    n = n_shards(wc.task)
    return [_contracts.score_file(cell_of(wc)["id"], i, n) for i in range(n)]


def all_cell_scores() -> list:
    return [cell_scores(cid) for cid in sorted(CELLS)]


# The fixed file names `latentmas aggregate` / `latentmas figures` write
TABLE_FILES = _contracts.TABLE_FILES
TABLE_CAPTIONS = {
    "settings.csv": "../report/settings.rst",
    "per_seed.csv": "../report/per_seed.rst",
    "table_accuracy.md": "../report/table_accuracy.rst",
    "table_tokens.md": "../report/table_tokens.rst",
    "table_speed.md": "../report/table_speed.rst",
}
TABLES_DIR = _contracts.TABLES_DIR
FIGURES_DIR = _contracts.FIGURES_DIR
FIGURE_NAMES = _contracts.FIGURE_NAMES
FIGURE_FORMATS = _contracts.FIGURE_FORMATS
PUBLISHED = [f"{_contracts.REPORTS_DIR}/tables/{n}" for n in TABLE_FILES] + [
    f"{_contracts.REPORTS_DIR}/figures/{n}.{ext}" for n in FIGURE_NAMES for ext in FIGURE_FORMATS
]


def table_output(name):
    path = f"{TABLES_DIR}/{name}"
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
    if c["method"] == "latent_mas" and c["realign"]:
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
