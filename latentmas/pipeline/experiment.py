"""The experiment grid as data: validate a pipeline config, expand it into cells, derive each shard's run settings.

One source of truth for Snakemake (``workflow/rules/common.smk`` calls these functions) and for
``latentmas run --config FILE --cell ID``: both see the same cells and the same settings for a cell, so a shard run
by hand is identical to the one the pipeline runs. Nothing here touches the network or the filesystem beyond reading
the config and the schema.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import yaml

from latentmas.contracts import CONFIG_SCHEMA as SCHEMA_PATH, TASK_NAMES, inject_enums
from latentmas.contracts import COMPILED_CONFLICT, control_name
from latentmas.pipeline.defaults import LATENT_DEFAULTS, SAMPLING_KNOBS


class ConfigError(ValueError):
    """An invalid pipeline config; the message lists every problem by key path."""


# ---------------------------------------------------------------------------------------------------------------------
# 1. Schema validation (defaults filled in), with messages that name the key path.
# ---------------------------------------------------------------------------------------------------------------------
# LATENT_DEFAULTS (the defaults the schema cannot carry) live in latentmas.pipeline.defaults with the run defaults.
# (cpus_per_task defaults to the job's threads)
RESOURCE_DEFAULTS = {
    "default": {"threads": 1, "mem_mb": 2000, "runtime": 30, "gpu": 0},
    "fetch_model": {"mem_mb": 16000, "runtime": 240},
    "align": {"mem_mb": 8000, "runtime": 60},
    "infer": {"mem_mb": 8000, "runtime": 240},
    "score": {"mem_mb": 4000, "runtime": 60},
}


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
        schema = inject_enums(yaml.safe_load(fh))
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
        raise ConfigError("invalid workflow config:\n  " + "\n  ".join(lines))
    return cfg


def semantic_errors(cfg: dict) -> list:
    """What the schema cannot express: cross-references and impossible combinations."""
    errs = []
    models, tasks = cfg["models"], cfg["tasks"]
    for name, t in tasks.items():
        if t.get("prompt_style", "ours") != "ours":
            from latentmas.eval.tasks import get_task

            styles = get_task(name).prompt_styles
            if t["prompt_style"] not in styles:
                errs.append(f"config.tasks.{name}.prompt_style: {t['prompt_style']!r} is not a prompt style of {name} "
                            f"(it has: {', '.join(styles)})")
        if t.get("n") is not None and t["n_shards"] > t["n"]:
            errs.append(f"config.tasks.{name}.n_shards: {t['n_shards']} shards for n={t['n']} items "
                        f"(some shards would be empty; use at most n)")
    for name, m in models.items():
        if m.get("linear_kernel") == "onednn" and m.get("decode_graph") == "compiled":
            errs.append(f"config.models.{name}.linear_kernel: {COMPILED_CONFLICT}")
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
    return errs or vllm_errors(cfg)  # (cells expand only from a config without the errors above)


def backend_of(cfg: dict, model: str) -> str:
    return cfg["models"][model].get("backend", cfg.get("backend", "hf"))


def vllm_errors(cfg: dict) -> list:
    """latent_mas on vLLM is equivalent to the HF hand-off only with memory: all and without controls (the vLLM
    prefix rebuilds the full hand-off; docs/ENGINE.md, docs/CONTROLS.md), and ``decode_graph`` is an HF-loop option:
    refused here, before any job starts."""
    bad: dict[str, set] = {}
    controls: dict[str, set] = {}
    for c in expand_cells(cfg).values():
        if c["method"] != "latent_mas" or backend_of(cfg, c["model"]) != "vllm":
            continue
        if c["memory"] != "all":
            bad.setdefault(c["model"], set()).add(c["memory"])
        if c["control"]:
            controls.setdefault(c["model"], set()).add(c["control"])
    graphs = [m for m, spec in sorted(cfg["models"].items())
              if backend_of(cfg, m) == "vllm" and spec.get("decode_graph", "eager") != "eager"]
    return ([f"config.models.{m}.decode_graph: {cfg['models'][m]['decode_graph']} is an HF-backend option; vLLM "
             f"runs its own graphs (CUDA graphs on a GPU): remove it or use backend: hf" for m in graphs]
            + [f"config.models.{m}.backend: vllm cannot run latent_mas with memory {sorted(mem)} (not equivalent to "
             f"the HF hand-off; only memory: all); use backend: hf for this model" for m, mem in sorted(bad.items())]
            + [f"config.models.{m}.backend: vllm cannot run the controls {sorted(names)} (they change what the final "
               f"agent inherits; the vLLM prefix rebuilds the full hand-off); set controls: [] or use backend: hf "
               f"for this model" for m, names in sorted(controls.items())])


# ---------------------------------------------------------------------------------------------------------------------
# 2. Cells: model x task x method x arch x latent settings x seed, only the meaningful combinations.
#    id = {model}/{task}/{variant}/seed{seed}; variant = baseline | text_mas-{arch} |
#         latent_mas-{arch}-k{steps}-{realign|norealign}[-mem_{memory}]  (memory suffix only when not "all")
#         [-{control}]  (docs/CONTROLS.md; a random map replaces the realign token: latent_mas-{arch}-k{steps}-map_...)
# ---------------------------------------------------------------------------------------------------------------------
def latent_settings(cfg: dict, model: str) -> dict:
    out = dict(LATENT_DEFAULTS)
    out.update(cfg.get("latent", {}))
    out.update(cfg["models"][model].get("latent", {}))
    return out


def variant_of(method, arch=None, latent_steps=None, realign=None, memory=None, control=None) -> str:
    if method == "baseline":
        return "baseline"
    if method == "text_mas":
        return f"text_mas-{arch}"
    v = f"latent_mas-{arch}-k{latent_steps}"
    if not (control and "map_random" in control):  # a random map is named by its control, not by realign
        v += f"-{'realign' if realign else 'norealign'}"
    v = v if memory == "all" else f"{v}-mem_{memory}"
    return v if control is None else f"{v}-{control}"


def _cell(model, task, method, seed, arch=None, latent_steps=None, realign=None, memory=None,
          control_settings=None) -> dict:
    control = control_name(**control_settings) if control_settings else None
    variant = variant_of(method, arch, latent_steps, realign, memory, control)
    return dict(id=f"{model}/{task}/{variant}/seed{seed}", model=model, task=task, variant=variant, method=method,
                arch=arch, latent_steps=latent_steps, realign=realign, memory=memory, seed=seed, control=control,
                control_settings=control_settings or {})


def control_variants(base: dict, names, keep_fractions) -> list[dict]:
    """The control cells run beside one latent_mas cell (docs/CONTROLS.md): one factor changed per control.

    Controls that make memory irrelevant (no_transfer, single_matched) use memory ``all`` so that a grid with several
    memory policies runs them once; ``scope_handoff`` only exists beside a previous/latent_only cell (with ``all``
    there is nothing to truncate); ``map_identity`` is the base cell with realign off (a plain latent_mas cell).
    """
    args = (base["model"], base["task"], "latent_mas", base["seed"], base["arch"], base["latent_steps"])
    out = []
    for name in names:
        if name in ("no_transfer", "single_matched"):
            out.append(_cell(*args, base["realign"], "all", {name: True}))
        elif name == "map_identity":
            if base["realign"]:
                out.append(_cell(*args, False, base["memory"]))
        elif name.startswith("map_"):
            out.append(_cell(*args, False, base["memory"], {"mapper": name[len("map_"):]}))
        elif name.startswith("keep_"):
            for f in keep_fractions:
                out.append(_cell(*args, base["realign"], base["memory"],
                                 {"keep_fraction": f, "keep_rule": name[len("keep_"):]}))
        elif name == "scope_handoff" and base["memory"] != "all":
            out.append(_cell(*args, base["realign"], base["memory"], {"memory_scope": "handoff"}))
    return out


def needs_align(cell_or_settings: dict) -> bool:
    """W_a is needed by the ridge map (realign on) and by the random map with W_a's spectrum."""
    mapper = cell_or_settings.get("mapper") or cell_or_settings.get("control_settings", {}).get("mapper")
    return bool(cell_or_settings.get("realign")) or mapper == "random_spectrum"


def expand_cells(cfg) -> dict:
    cells = {}

    def add(c):
        cells.setdefault(c["id"], c)

    for model in cfg["models"]:
        lat = latent_settings(cfg, model)
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
        lat = latent_settings(cfg, model)
        arch = None if method == "baseline" else c.get("arch", cfg["archs"][0])
        seed = c.get("seed", cfg["seeds"][0])
        if method == "latent_mas":
            add(_cell(model, c["task"], method, seed, arch, c.get("latent_steps", lat["steps"][0]),
                      c.get("realign", lat["realign"][0]), c.get("memory", lat["memory"][0])))
        else:
            add(_cell(model, c["task"], method, seed, arch))
    if cfg.get("controls_enabled", True):
        for base in [c for c in cells.values() if c["method"] == "latent_mas" and c["control"] is None]:
            for c in control_variants(base, cfg.get("controls", []), cfg.get("control_keep_fractions", [0.6])):
                add(c)
    return cells


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Read and validate a pipeline config file (defaults filled in)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} not found")
    cfg = yaml.safe_load(p.read_text()) or {}
    return validate_config(cfg, schema_path)


def cell_settings(cfg: dict, cell: dict, shard: int, nshards: int) -> dict:
    """Everything `latentmas run` is told for one shard of a cell besides file paths.

    Only the keys that matter for this cell appear (sampling knobs only when sampling, latent settings only for
    latent_mas), so Snakemake's params rerun trigger reruns exactly the jobs whose slice of the config changed.
    """
    m, t, dec = cfg["models"][cell["model"]], cfg["tasks"][cell["task"]], cfg["decoding"]
    s = {"task": cell["task"], "method": cell["method"]}
    if cell["method"] != "baseline":
        s["arch"] = cell["arch"]
    if cell["method"] == "latent_mas":
        s.update(latent_steps=cell["latent_steps"], realign=cell["realign"], memory=cell["memory"])
        s.update(cell.get("control_settings", {}))  # only a control cell has any: other cells' params are unchanged
        lam = latent_settings(cfg, cell["model"]).get("ridge_lambda")
        if needs_align(cell) and lam is not None:
            s["ridge_lambda"] = lam
    s.update(seed=cell["seed"], n=t["n"], shard=f"{int(shard)}/{int(nshards)}",
             batch_size=m.get("batch_size", dec["batch_size"]), greedy=dec["greedy"])
    if not dec["greedy"]:  # unset knobs stay unset: the runner takes them from the model's generation_config
        s.update({k: dec[k] for k in SAMPLING_KNOBS if dec.get(k) is not None})
    if t.get("prompt_style", "ours") != "ours":
        s["prompt_style"] = t["prompt_style"]
    if m.get("chat_template") is not None:
        s["chat_template"] = m["chat_template"]
    s["max_new_tokens"] = t.get("max_new_tokens", dec["max_new_tokens"])
    if cell["method"] == "text_mas" and dec["agent_max_new_tokens"] is not None:
        s["agent_max_new_tokens"] = dec["agent_max_new_tokens"]
    s.update(think=dec["think"], dtype=m["dtype"], device=m["device"], trace=cfg["trace"])
    if m.get("decode_graph", "eager") != "eager":  # absent when eager: existing jobs' params stay unchanged
        s["decode_graph"] = m["decode_graph"]
    if m.get("linear_kernel", "auto") != "auto":  # likewise absent when auto
        s["linear_kernel"] = m["linear_kernel"]
    if backend_of(cfg, cell["model"]) == "vllm":  # absent for hf: hf jobs' params are unchanged by this option
        s["backend"] = "vllm"
        s.update({f"vllm_{k}": v for k, v in cfg["vllm"].items() if v is not None})
    return s


def get_cell(cfg: dict, cell_id: str) -> dict:
    cells = expand_cells(cfg)
    if cell_id not in cells:
        near = [c for c in sorted(cells) if c.split("/")[:2] == cell_id.split("/")[:2]][:5]
        raise ConfigError(f"{cell_id!r} is not a cell of this config" + (f"; cells of that model/task: {near}"
                                                                        if near else ""))
    return cells[cell_id]


# Paths of the pipeline's artifacts (relative to the working directory), shared with the Snakemake rules.
# settings key -> `latentmas run` option (None: a boolean flag handled in run_args)
RUN_OPTIONS = {"task": "--task", "method": "--method", "arch": "--arch", "latent_steps": "--latent-steps",
               "memory": "--memory", "ridge_lambda": "--ridge-lambda", "seed": "--seed", "n": "--n",
               "shard": "--shard", "batch_size": "--batch-size", "temperature": "--temperature", "top_p": "--top-p",
               "top_k": "--top-k", "min_p": "--min-p", "repetition_penalty": "--repetition-penalty",
               "prompt_style": "--prompt-style", "chat_template": "--chat-template",
               "max_new_tokens": "--max-new-tokens", "agent_max_new_tokens": "--agent-max-new-tokens",
               "think": "--think", "dtype": "--dtype", "device": "--device", "decode_graph": "--decode-graph",
               "linear_kernel": "--linear-kernel",
               "trace": "--trace", "mapper": "--mapper",
               "keep_fraction": "--keep-fraction", "keep_rule": "--keep-rule", "memory_scope": "--memory-scope",
               "realign": None, "greedy": None, "no_transfer": None, "single_matched": None,
               "backend": "--backend", "vllm_gpu_memory_utilization": "--vllm-gpu-memory-utilization",
               "vllm_tensor_parallel_size": "--vllm-tensor-parallel-size", "vllm_max_model_len": "--vllm-max-model-len",
               "vllm_cuda_visible_devices": "--vllm-cuda-visible-devices", "vllm_cpu_kv_cache_gb": "--vllm-cpu-kv-cache-gb",
               "vllm_prefix_caching": None}


def run_args(settings: dict, model_dir: str, model_name: str, data: str, align: str | None) -> list[str]:
    """The `latentmas run` arguments (without --out) for one shard's settings (see :func:`cell_settings`)."""
    unknown = set(settings) - set(RUN_OPTIONS)
    if unknown:
        raise ConfigError(f"no `latentmas run` option for settings {sorted(unknown)}")
    args = ["--model", str(model_dir), "--model-name", model_name, "--data", str(data)]
    for key, opt in RUN_OPTIONS.items():
        if opt is not None and settings.get(key) is not None:
            args += [opt, str(settings[key])]
    if "realign" in settings:
        args.append("--realign" if settings["realign"] else "--no-realign")
        if needs_align(settings):
            if align is None:
                raise ConfigError("a latent_mas cell that uses W_a (realign or map_random_spectrum) needs its W_a file")
            args += ["--align-file", str(align)]
    for flag in ("no_transfer", "single_matched"):
        if settings.get(flag):
            args.append("--" + flag.replace("_", "-"))
    if "greedy" in settings:  # explicit either way: the runner's default must not decide a pipeline job
        args.append("--greedy" if settings["greedy"] else "--no-greedy")
    if "vllm_prefix_caching" in settings:
        args.append("--vllm-prefix-caching" if settings["vllm_prefix_caching"] else "--no-vllm-prefix-caching")
    return args
