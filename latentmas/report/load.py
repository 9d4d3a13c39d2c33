"""Read scored records and check them against the contract before any arithmetic.

The record shape is checked by the JSON Schema (:data:`latentmas.contracts.SCORED_RECORD_SCHEMA`); what a schema
cannot say (finite numbers, ``total = prompt + latent + generated``, one sample per setting/seed/id, one set of run
settings per setting) is checked here. Every error names the file, line, sample and field.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import polars as pl

from latentmas.contracts import SCORED_RECORD_SCHEMA, validator
from latentmas.records import read_records
from latentmas.report.labels import SETTING_KEY

# run settings that are not part of the setting key but change results: all records of one setting must agree on
# them (when present), so that two differently configured runs are never silently pooled
CONFIG_FIELDS = ("greedy", "temperature", "top_p", "max_new_tokens", "agent_max_new_tokens", "think", "dtype",
                 "ridge_lambda")
_ABSENT = "<absent>"

SAMPLE_SCHEMA: dict[str, Any] = {
    "model": pl.String, "task": pl.String, "method": pl.String, "arch": pl.String, "latent_steps": pl.Int64,
    "realign": pl.Boolean, "memory": pl.String, "seed": pl.Int64, "sample_id": pl.String, "ok": pl.Boolean,
    "correct": pl.Boolean, "tokens_prompt": pl.Int64, "tokens_latent": pl.Int64, "tokens_generated": pl.Int64,
    "tokens_total": pl.Int64, "wall_s": pl.Float64, "strict_correct": pl.Boolean,
}


class AggregateInputError(ValueError):
    """The scored records cannot be aggregated (missing/invalid field, duplicate sample, no input)."""


def _line_number(path: Path, record_index: int) -> int:
    """1-based line of the ``record_index``-th record (read_records skips blank lines; count them back in)."""
    seen = -1
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                seen += 1
                if seen == record_index:
                    return lineno
    return record_index + 1


def _schema_problem(rec: Any) -> tuple[str, str] | None:
    """(field, problem) of the most relevant schema violation, or None."""
    import jsonschema

    err = jsonschema.exceptions.best_match(validator(SCORED_RECORD_SCHEMA).iter_errors(rec))
    if err is None:
        return None
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "required":
        missing = next(k for k in err.validator_value if k not in err.instance)
        field = f"{path}.{missing}" if path else missing
        hint = " (is this an unscored inference record? run `latentmas score` first)" if missing == "correct" else ""
        return field, "is missing" + hint
    if err.validator == "type" and not path:
        return "", f"record is a {type(rec).__name__}, not a JSON object"
    desc = err.schema.get("description") or (err.parent.schema.get("description") if err.parent else None)
    return path, f"{desc or err.message}, got {err.instance!r}"


def _semantic_problem(rec: dict[str, Any]) -> tuple[str, str] | None:
    tok, wall = rec.get("tokens"), rec.get("wall_s")
    if wall is not None and not math.isfinite(wall):
        return "wall_s", f"must be a finite non-negative number, got {wall!r}"
    if tok is not None:
        parts = tok["prompt"] + tok["latent"] + tok["generated"]
        if tok["total"] != parts:
            return "tokens.total", f"is {tok['total']}, not prompt + latent + generated = {parts}"
    return None


def check_record(rec: Any, where: Callable[[], str]) -> None:
    """Raise :class:`AggregateInputError` naming ``where()`` (file:line), the sample and the field."""
    problem = _schema_problem(rec) or _semantic_problem(rec)
    if problem is None:
        return
    field, what = problem
    if not field:
        raise AggregateInputError(f"{where()}: {what}")
    sid = rec.get("sample_id") if isinstance(rec, dict) else None
    sid_part = f" (sample_id {sid!r})" if sid is not None else ""
    raise AggregateInputError(f"{where()}{sid_part}: field {field!r} {what}")


def _sample_row(rec: dict[str, Any]) -> dict[str, Any]:
    ok = rec["status"] == "ok"
    tok = rec.get("tokens") if ok else None  # a failed sample's partial cost is not averaged (docs/TABLES.md)
    row = {k: rec[k] for k in SETTING_KEY}
    strict = rec.get("strict_correct")  # scored with the original's rules too (scoring.extraction: both)
    if strict is None and rec.get("extraction") == "strict":
        strict = rec["correct"]
    row.update(seed=rec["seed"], sample_id=rec["sample_id"], ok=ok, correct=rec["correct"],
               wall_s=float(rec["wall_s"]) if ok else None, strict_correct=strict)
    for kind in ("prompt", "latent", "generated", "total"):
        row[f"tokens_{kind}"] = tok[kind] if tok is not None else None
    return row


def load_samples(paths: Sequence[str | Path]) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Read and check all scored records; return one row per sample and per-file input info (for summary.json)."""
    if not paths:
        raise AggregateInputError("no input files given")
    rows: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    seen: dict[tuple, tuple[Path, int]] = {}
    setting_config: dict[tuple, tuple[tuple, Path, int]] = {}
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise AggregateInputError(f"{path}: input file not found")
        records = read_records(path)
        inputs.append({"path": str(raw_path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                       "n_records": len(records)})
        for i, rec in enumerate(records):
            where = lambda i=i: f"{path}:{_line_number(path, i)}"  # noqa: E731 - line numbers only on error
            check_record(rec, where)
            key = tuple(rec[k] for k in SETTING_KEY)
            ident = key + (rec["seed"], rec["sample_id"])
            if ident in seen:
                p0, i0 = seen[ident]
                raise AggregateInputError(
                    f"{where()} (sample_id {rec['sample_id']!r}): duplicate sample -- the same setting, seed "
                    f"{rec['seed']} and sample_id already came from {p0}:{_line_number(p0, i0)}")
            seen[ident] = (path, i)
            config = tuple(rec.get(f, _ABSENT) for f in CONFIG_FIELDS)
            if key not in setting_config:
                setting_config[key] = (config, path, i)
            elif setting_config[key][0] != config:
                c0, p0, i0 = setting_config[key]
                j = next(j for j in range(len(CONFIG_FIELDS)) if c0[j] != config[j])
                raise AggregateInputError(
                    f"{where()} (sample_id {rec['sample_id']!r}): field {CONFIG_FIELDS[j]!r} is {config[j]!r} but "
                    f"{p0}:{_line_number(p0, i0)} of the same setting has {c0[j]!r} -- runs with different "
                    f"settings must not be pooled into one setting")
            rows.append(_sample_row(rec))
    if not rows:
        raise AggregateInputError("no scored records in the input files: " + ", ".join(str(p) for p in paths))
    return pl.DataFrame(rows, schema=SAMPLE_SCHEMA, orient="row"), sorted(inputs, key=lambda d: d["path"])
