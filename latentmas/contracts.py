"""The contracts every layer shares: names, file layout and record schemas, each defined once.

The runner, the scorer, the aggregator, the figures and ``workflow/rules/common.smk`` import these instead of
spelling a task name, a method or a file name themselves; the JSON Schemas beside this module (package data) say
what a record is. The YAML config schema gets its enums from here at load time (:func:`inject_enums`).

Vocabulary: a *cell* is one seed's run of one configuration in the pipeline (``{model}/{task}/{variant}/seed{n}``);
a *setting* is one configuration with its seeds pooled, the unit of the tables (``settings.parquet``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_DIR = PACKAGE_DIR / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
RECORD_SCHEMA = SCHEMA_DIR / "record.schema.json"
SCORED_RECORD_SCHEMA = SCHEMA_DIR / "scored_record.schema.json"

# ------------------------------------------------------------------------------------------------------ enums
# canonical order = display order of the tables and figures
TASK_NAMES: tuple[str, ...] = ("gsm8k", "aime2024", "aime2025", "gpqa_diamond", "medqa", "arc_easy", "arc_challenge",
                               "mbppplus", "humanevalplus")
METHODS: tuple[str, ...] = ("baseline", "text_mas", "latent_mas")
ARCHS: tuple[str, ...] = ("sequential", "hierarchical")  # built-in topologies (latentmas/engine/topologies/*.yaml)
MEMORY_POLICIES: tuple[str, ...] = ("all", "previous", "latent_only")
STATUSES: tuple[str, ...] = ("ok", "failed")
TOKEN_KINDS: tuple[str, ...] = ("prompt", "latent", "generated", "total")
# how the HF model's linear layers run (latentmas/engine/packed_linear.py; docs/ENGINE.md, "Packed linears")
LINEAR_KERNELS: tuple[str, ...] = ("auto", "onednn", "aten")
# torch.compile cannot trace oneDNN's opaque packed tensors: the one message every layer meeting the pair uses
COMPILED_CONFLICT = ("linear_kernel onednn cannot be combined with decode_graph compiled (torch.compile cannot trace "
                     "packed weights); use linear_kernel auto or aten")

# the enum each config-schema placeholder ``{$enum: NAME}`` is replaced with (see inject_enums)
ENUMS: dict[str, tuple[str, ...]] = {"tasks": TASK_NAMES, "methods": METHODS, "archs": ARCHS,
                                     "memory_policies": MEMORY_POLICIES, "statuses": STATUSES,
                                     "linear_kernels": LINEAR_KERNELS}

# ------------------------------------------------------------------------------------------------------ exit codes
# every `latentmas` sub-command (README "Exit codes"): bad input is reported before any long work starts
EXIT_OK = 0
EXIT_FAILURE = 1  # the work itself failed: a check failed, a download broke, an unexpected error (traceback)
EXIT_BAD_INPUT = 2  # the command line, a config, a file or a record cannot be used; the message names it

# ------------------------------------------------------------------------------------------------------ artifacts
# paths relative to the workflow's working directory (the checkout)
MODELS_DIR = "resources/models"
MODEL_SENTINEL = ".fetched"
SHARD_NAME = "shard-{shard}-of-{nshards}"  # a cell's slice of the samples
MERGED_SCORES = "all.jsonl"  # one cell's shards' scores concatenated
TABLES_DIR = "results/tables"
FIGURES_DIR = "results/figures"
REPORTS_DIR = "reports"

# what `latentmas aggregate` writes (in --out-dir) and `latentmas figures` draws (each as .png and .svg)
TABLE_FILES: tuple[str, ...] = ("settings.parquet", "settings.csv", "per_seed.parquet", "per_seed.csv",
                                "table_accuracy.md", "table_tokens.md", "table_speed.md", "summary.json")
FIGURE_NAMES: tuple[str, ...] = ("accuracy", "tokens", "speedup", "latent_steps")
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg")


def model_dir(model: str) -> str:
    return f"{MODELS_DIR}/{model}"


def model_sentinel(model: str) -> str:
    return f"{model_dir(model)}/{MODEL_SENTINEL}"


def data_file(task: str) -> str:
    return f"results/data/{task}.parquet"


def data_checksum_file(task: str) -> str:
    return f"{data_file(task)}.sha256"


def align_file(model: str) -> str:
    return f"results/align/{model}.safetensors"


def infer_file(cell: str, shard: Any, nshards: Any) -> str:
    """``cell`` = ``{model}/{task}/{variant}/seed{seed}`` (or a Snakemake pattern of it)."""
    return f"results/infer/{cell}/{SHARD_NAME.format(shard=shard, nshards=nshards)}.jsonl"


def score_file(cell: str, shard: Any, nshards: Any) -> str:
    return f"results/score/{cell}/{SHARD_NAME.format(shard=shard, nshards=nshards)}.jsonl"


def cell_scores(cell: str) -> str:
    return f"results/score/{cell}/{MERGED_SCORES}"


def log_file(stage: str, name: str | None = None) -> str:
    """Where a workflow job writes its log (the file to ``tail -f``; README "Following a running pipeline"):
    ``logs/{stage}/{name}.log``, or ``logs/{stage}.log`` for the one-job stages (aggregate, figures, publish)."""
    return f"logs/{stage}.log" if name is None else f"logs/{stage}/{name}.log"


# ------------------------------------------------------------------------------------------------------ schemas
def inject_enums(node: Any) -> Any:
    """Replace every ``"$enum": NAME`` in a loaded schema with ``"enum": [...ENUMS[NAME]]`` (recursively)."""
    if isinstance(node, dict):
        out = {k: inject_enums(v) for k, v in node.items() if k != "$enum"}
        if "$enum" in node:
            out["enum"] = list(ENUMS[node["$enum"]])
        return out
    if isinstance(node, list):
        return [inject_enums(v) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def _schema(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return inject_enums(json.load(fh))


@functools.lru_cache(maxsize=None)
def validator(path: Path, part: str | None = None):
    """A compiled Draft 2020-12 validator for one of the record schemas, or for its ``$defs/<part>`` (cached: cheap
    per record)."""
    import jsonschema

    schema = _schema(path)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    if part is not None:
        schema = {"$ref": f"{path.name}#/$defs/{part}"}
    return cls(schema, registry=_registry())


class RecordContractError(RuntimeError):
    """A record this package wrote or is about to write breaks its schema (a bug, not bad input)."""


def check(record: dict, path: Path, part: str | None = None) -> None:
    """Raise :class:`RecordContractError` naming the sample and field of the most relevant violation."""
    import jsonschema

    err = jsonschema.exceptions.best_match(validator(path, part).iter_errors(record))
    if err is not None:
        field = ".".join(str(p) for p in err.absolute_path) or "(record)"
        raise RecordContractError(f"{path.name}: sample {record.get('sample_id')!r}: {field}: {err.message}")


@functools.lru_cache(maxsize=None)
def _registry():
    """Lets the scored-record schema ``$ref`` the record schema by file name."""
    from referencing import Registry, Resource

    return Registry().with_resources(
        (p.name, Resource.from_contents(_schema(p))) for p in (RECORD_SCHEMA, SCORED_RECORD_SCHEMA))

# ---------------------------------------------------------------------------------------------------------------------
# Controls and ablations of latent_mas (docs/CONTROLS.md). Each control is a first-class cell: config `controls:`,
# `latentmas run` flags, its own variant name (suffix `-<control>`) and a record field `control` that the tables key on.
# ---------------------------------------------------------------------------------------------------------------------
# Names a config lists under `controls:`; each runs beside every latent_mas cell of the grid.
CONTROLS = (
    "no_transfer",            # the final agent gets no memory (decodes from its own prompt alone)
    "single_matched",         # one agent (the final agent's prompt) thinks the team's total latent steps, then answers
    "map_identity",           # beside a realign cell: the same cell with realign off (identity map)
    "map_random_orthogonal",  # a seeded random orthogonal map instead of W_a
    "map_random_spectrum",    # a seeded random map with W_a's singular values
    "keep_random",            # memory budget: keep a seeded random share of the handed-over positions
    "keep_recent",            # ... the most recent share
    "keep_knn_top",           # ... kNN-LatentMAS's rule: the share most similar to the receiving prompt
    "keep_knn_bottom",        # ... the least similar share (kNN-LatentMAS's "random k%" arm is keep_random)
    "scope_handoff",          # memory policies truncate after every hand-off (the original code), not only at the end
)
# The latent map of a latent_mas cell: realign on = ridge, off = identity; the random ones are controls.
MAPPERS = ("ridge", "identity", "random_orthogonal", "random_spectrum")
# How a memory budget picks the handed-over positions it keeps (`keep_<rule>` controls, `latentmas run --keep-rule`).
KEEP_RULES = ("random", "recent", "knn_top", "knn_bottom")
# Where a memory policy (previous / latent_only) is applied: only when building the final agent's view (ours, the
# default) or after every hand-off (the original code; its latent_only then keeps only the last agent's latents).
MEMORY_SCOPES = ("final", "handoff")


def control_name(no_transfer: bool = False, single_matched: bool = False, mapper: str | None = None,
                 keep_fraction: float = 1.0, keep_rule: str = "random", memory_scope: str = "final") -> str | None:
    """The name a control run carries in records (field ``control``) and in its variant (suffix); None = no control.

    ``keep0.6`` of rule ``knn_top`` is ``keep60_knn_top``; several controls at once are joined by ``-``.
    """
    parts = []
    if no_transfer:
        parts.append("no_transfer")
    if single_matched:
        parts.append("single_matched")
    if mapper in ("random_orthogonal", "random_spectrum"):
        parts.append(f"map_{mapper}")
    if keep_fraction < 1.0:
        parts.append(f"keep{100 * keep_fraction:g}_{keep_rule}")
    if memory_scope == "handoff":
        parts.append("scope_handoff")
    return "-".join(parts) or None
