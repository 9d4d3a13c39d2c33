# Config loading, validation, cell expansion and input/param/resource functions shared by every stage.
#
# Nothing here touches the network or the filesystem beyond reading the config files and the schema: the DAG of the
# full paper grid is planned without downloading a byte.

import copy
import re
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError


# ---------------------------------------------------------------------------------------------------------------------
# 1. Schema validation (defaults filled in), with messages that name the key path.
# ---------------------------------------------------------------------------------------------------------------------
SCHEMA_PATH = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"

# Defaults the schema cannot carry because the same sub-schema is used for per-model overrides (which must stay empty
# where the user left them empty, so the top-level values show through).
LATENT_DEFAULTS = {"steps": [10], "realign": [True], "memory": ["all"]}
# (cpus_per_task defaults to the job's threads)
RESOURCE_DEFAULTS = {
    "default": {"threads": 1, "mem_mb": 2000, "runtime": 30, "gpu": 0},
    "fetch_model": {"mem_mb": 16000, "runtime": 240},
    "align": {"mem_mb": 8000, "runtime": 60},
    "infer": {"mem_mb": 8000, "runtime": 240},
    "score": {"mem_mb": 4000, "runtime": 60},
}
TASK_NAMES = ("gsm8k", "aime2024", "aime2025", "gpqa_diamond", "medqa", "arc_easy", "arc_challenge", "mbppplus",
              "humanevalplus")


def _with_defaults(validator_class):
    """jsonschema validator that also fills `default`s of properties (the documented jsonschema recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(path) -> str:
    out = "config"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(error) -> str:
    """One line per error: the key path, what is wrong, what is allowed."""
    path = _key_path(error.absolute_path)
    v = error.validator
    if v == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed
                 and not any(re.search(p, k) for p in error.schema.get("patternProperties", {}))]
        return "; ".join(f"{path}.{k}: unknown key (allowed: {', '.join(allowed)})" for k in extra)
    if v == "propertyNames":
        bad = error.instance
        if "enum" in error.validator_value:
            return f"{path}.{bad}: unknown name {bad!r} (known: {', '.join(error.validator_value['enum'])})"
        return f"{path}.{bad}: invalid name {bad!r} ({error.message})"
    if v == "enum" and "propertyNames" in error.schema_path:
        parent = _key_path(error.absolute_path)
        return f"{parent}.{error.instance}: unknown name {error.instance!r} (known: {', '.join(error.validator_value)})"
    if v == "enum":
        return f"{path}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"{path}: expected {want}, got {type(error.instance).__name__} {error.instance!r}"
    if v in ("minimum", "exclusiveMinimum"):
        op = ">=" if v == "minimum" else ">"
        return f"{path}: must be {op} {error.validator_value}, got {error.instance!r}"
    return f"{path}: {error.message}"


def validate_config(cfg: dict, schema_path=SCHEMA_PATH) -> dict:
    """Validate ``cfg`` in place (filling defaults); raise WorkflowError listing every problem by key path."""
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    cls = _with_defaults(jsonschema.Draft202012Validator)
    errors = sorted(cls(schema).iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    lines = []
    for err in errors:
        # a oneOf/anyOf wrapper says little; its best sub-error says what is wrong
        if err.context:
            err = jsonschema.exceptions.best_match(err.context)
        line = _describe(err)
        if line not in lines:
            lines.append(line)
    lines += semantic_errors(cfg) if not lines else []
    if lines:
        raise WorkflowError("invalid workflow config:\n  " + "\n  ".join(lines))
    return cfg


def semantic_errors(cfg: dict) -> list:
    """What the schema cannot express: cross-references and impossible combinations."""
    errs = []
    models, tasks = cfg["models"], cfg["tasks"]
    for name, t in tasks.items():
        if t.get("n") is not None and t["n_shards"] > t["n"]:
            errs.append(f"config.tasks.{name}.n_shards: {t['n_shards']} shards for n={t['n']} items "
                        f"(some shards would be empty; use at most n)")
    for i, c in enumerate(cfg.get("extra_cells", [])):
        where = f"config.extra_cells[{i}]"
        if c["model"] not in models:
            errs.append(f"{where}.model: {c['model']!r} is not declared under models: "
                        f"(declared: {', '.join(models)})")
        if c["task"] not in tasks:
            known = [t for t in TASK_NAMES if t in tasks]
            errs.append(f"{where}.task: {c['task']!r} is not declared under tasks: (declared: {', '.join(known)})")
        if c["method"] == "baseline" and "arch" in c:
            errs.append(f"{where}.arch: baseline is a single agent and has no arch")
        if c["method"] != "latent_mas":
            for k in ("latent_steps", "realign", "memory"):
                if k in c:
                    errs.append(f"{where}.{k}: only latent_mas cells have latent settings (method is {c['method']})")
    return errs


validate_config(config)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Cells: model x task x method x arch x latent settings x seed, only the meaningful combinations.
#    id = {model}/{task}/{variant}/seed{seed}; variant = baseline | text_mas-{arch} |
#         latent_mas-{arch}-k{steps}-{realign|norealign}[-mem_{memory}]  (memory suffix only when not "all")
# ---------------------------------------------------------------------------------------------------------------------
def latent_settings(model: str) -> dict:
    out = dict(LATENT_DEFAULTS)
    out.update(config.get("latent", {}))
    out.update(config["models"][model].get("latent", {}))
    return out


def variant_of(method, arch=None, latent_steps=None, realign=None, memory=None) -> str:
    if method == "baseline":
        return "baseline"
    if method == "text_mas":
        return f"text_mas-{arch}"
    v = f"latent_mas-{arch}-k{latent_steps}-{'realign' if realign else 'norealign'}"
    return v if memory == "all" else f"{v}-mem_{memory}"


def _cell(model, task, method, seed, arch=None, latent_steps=None, realign=None, memory=None) -> dict:
    variant = variant_of(method, arch, latent_steps, realign, memory)
    return dict(id=f"{model}/{task}/{variant}/seed{seed}", model=model, task=task, variant=variant, method=method,
                arch=arch, latent_steps=latent_steps, realign=realign, memory=memory, seed=seed)


def expand_cells(cfg) -> dict:
    cells = {}

    def add(c):
        cells.setdefault(c["id"], c)

    for model in cfg["models"]:
        lat = latent_settings(model)
        for task in cfg["tasks"]:
            for seed in cfg["seeds"]:
                for method in cfg["methods"]:
                    if method == "baseline":
                        add(_cell(model, task, method, seed))
                    elif method == "text_mas":
                        for arch in cfg["archs"]:
                            add(_cell(model, task, method, seed, arch))
                    else:
                        for arch in cfg["archs"]:
                            for k in lat["steps"]:
                                for r in lat["realign"]:
                                    for mem in lat["memory"]:
                                        add(_cell(model, task, method, seed, arch, k, r, mem))
    for c in cfg.get("extra_cells", []):
        method, model = c["method"], c["model"]
        lat = latent_settings(model)
        arch = None if method == "baseline" else c.get("arch", cfg["archs"][0])
        seed = c.get("seed", cfg["seeds"][0])
        if method == "latent_mas":
            add(_cell(model, c["task"], method, seed, arch, c.get("latent_steps", lat["steps"][0]),
                      c.get("realign", lat["realign"][0]), c.get("memory", lat["memory"][0])))
        else:
            add(_cell(model, c["task"], method, seed, arch))
    return cells


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
    return sorted({c["model"] for c in CELLS.values() if c["method"] == "latent_mas" and c["realign"]})


# ---------------------------------------------------------------------------------------------------------------------
# 3. Paths
# ---------------------------------------------------------------------------------------------------------------------
def model_dir(model: str) -> str:
    return f"resources/models/{model}"


def model_sentinel(model: str) -> str:
    return f"resources/models/{model}/.fetched"


def data_file(task: str) -> str:
    return f"results/data/{task}.parquet"


def align_file(model: str) -> str:
    return f"results/align/{model}.safetensors"


def cell_scores(cell_id: str) -> str:
    return f"results/score/{cell_id}/all.jsonl"


def all_cell_scores() -> list:
    return [cell_scores(cid) for cid in sorted(CELLS)]


# The fixed file names `latentmas aggregate` / `latentmas figures` write (latentmas.aggregate.OUTPUT_FILES,
# latentmas.figures.FIGURES; tests/test_workflow.py keeps them in sync).
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
    if c["method"] == "latent_mas" and c["realign"]:
        ins["align"] = align_file(c["model"])
    return ins


def infer_settings(wc) -> dict:
    """Everything `latentmas run` is told besides file paths; recorded by Snakemake as the job's params."""
    c = cell_of(wc)
    m, t, dec = config["models"][c["model"]], config["tasks"][c["task"]], config["decoding"]
    s = {"task": c["task"], "method": c["method"]}
    if c["method"] != "baseline":
        s["arch"] = c["arch"]
    if c["method"] == "latent_mas":
        s.update(latent_steps=c["latent_steps"], realign=c["realign"], memory=c["memory"])
        lam = latent_settings(c["model"]).get("ridge_lambda")
        if c["realign"] and lam is not None:
            s["ridge_lambda"] = lam
    s.update(seed=c["seed"], n=t["n"], shard=f"{int(wc.shard)}/{int(wc.nshards)}",
             batch_size=m.get("batch_size", dec["batch_size"]), greedy=dec["greedy"])
    if not dec["greedy"]:  # sampling knobs only where they matter, so they do not rerun greedy cells
        s.update(temperature=dec["temperature"], top_p=dec["top_p"])
    s["max_new_tokens"] = t.get("max_new_tokens", dec["max_new_tokens"])
    if c["method"] == "text_mas" and dec["agent_max_new_tokens"] is not None:
        s["agent_max_new_tokens"] = dec["agent_max_new_tokens"]
    s.update(think=dec["think"], dtype=m["dtype"], device=m["device"])
    return s


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
