"""``latentmas aggregate``: scored records in, tidy tables and paper-style Markdown tables out.

One *setting* is one experimental configuration, ``(model, task, method, arch, latent_steps, realign, memory)``; its
seeds are replicates and are pooled (a pipeline *cell* is one seed of a setting). Outputs (all in ``--out-dir``, each
written atomically; names in :data:`latentmas.contracts.TABLE_FILES`):

* ``settings.parquet`` / ``settings.csv`` -- one row per setting (accuracy, confidence intervals, tokens, wall time,
  and for ``latent_mas`` rows the speedup and token reduction against the matching ``text_mas`` setting);
* ``per_seed.parquet`` / ``per_seed.csv`` -- one row per setting x seed;
* ``table_accuracy.md``, ``table_tokens.md``, ``table_speed.md`` -- laid out like the paper's Tables 1-3;
* ``summary.json`` -- counts and input checksums.

The stage is read + check (:mod:`.load`) -> numbers (:mod:`.tables`) -> text (:mod:`.markdown`); this module only
wires them and writes. Same input records -> byte-identical outputs, whatever their order; no timestamps are written.
docs/TABLES.md defines every column.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from latentmas.contracts import ARCHS, EXIT_BAD_INPUT, EXIT_OK, METHODS, TABLE_FILES, TASK_NAMES
from latentmas.records import atomic_path
from latentmas.report.labels import order_rank
from latentmas.report.load import AggregateInputError, load_samples
from latentmas.report.markdown import render_accuracy, render_speed, render_tokens
from latentmas.report.tables import SETTING_SCHEMA, CI_LEVEL, PER_SEED_SCHEMA, compute_tables

log = logging.getLogger(__name__)

OUTPUT_FILES = TABLE_FILES
__all__ = ["AggregateInputError", "SETTING_SCHEMA", "PER_SEED_SCHEMA", "aggregate", "cli_main"]


def _csv_frame(df: pl.DataFrame) -> pl.DataFrame:
    """CSV cannot hold list columns: write them as JSON arrays (e.g. ``[0.7, 0.8]``)."""
    exprs = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.List):
            exprs.append(pl.col(name).map_elements(lambda v: json.dumps(list(v)), return_dtype=pl.String))
        else:
            exprs.append(pl.col(name))
    return df.select(exprs)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def _write_frame(df: pl.DataFrame, out_dir: Path, stem: str) -> None:
    with atomic_path(out_dir / f"{stem}.parquet") as tmp:
        df.write_parquet(tmp, compression="zstd", statistics=True)
    with atomic_path(out_dir / f"{stem}.csv") as tmp:
        _csv_frame(df).write_csv(tmp)


def build_summary(settings: pl.DataFrame, samples: pl.DataFrame, inputs: list[dict[str, Any]]) -> dict:
    def uniq(field_name: str) -> list:
        vals = set(settings[field_name].to_list())
        order = {"task": TASK_NAMES, "arch": ARCHS}.get(field_name, ())
        return sorted(vals, key=lambda v: order_rank(v, order) if field_name != "method" else METHODS.index(v))

    by_method = dict(settings.group_by("method").len().iter_rows())
    latent = settings.filter(pl.col("method") == "latent_mas")
    return {
        "schema": 1,
        "ci_level": CI_LEVEL,
        "n_inputs": len(inputs),
        "inputs": inputs,
        "n_samples": samples.height,
        "n_failed": int((~samples["ok"]).sum()),
        "n_settings": settings.height,
        "n_settings_by_method": {m: by_method.get(m, 0) for m in METHODS},
        "n_settings_ci_t_seeds": int((settings["ci_method"] == "t_seeds").sum()),
        "n_latent_mas_settings_with_text_mas_match": int(latent["speedup_vs_text_mas"].is_not_null().sum()),
        "models": uniq("model"),
        "tasks": uniq("task"),
        "methods": uniq("method"),
        "archs": [a for a in uniq("arch") if a is not None],
        "seeds": sorted(set(samples["seed"].to_list())),
    }


def aggregate(paths: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Run the whole stage; return the summary dict."""
    samples, inputs = load_samples(paths)
    settings, per_seed = compute_tables(samples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_frame(settings, out, "settings")
    _write_frame(per_seed, out, "per_seed")
    _write_text(out / "table_accuracy.md", render_accuracy(settings))
    _write_text(out / "table_tokens.md", render_tokens(settings))
    _write_text(out / "table_speed.md", render_speed(settings))
    summary = build_summary(settings, samples, inputs)
    _write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    log.info("aggregated %d samples from %d files into %d settings -> %s", samples.height, len(inputs), settings.height,
             out)
    return summary


def cli_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="latentmas aggregate",
        description="Aggregate scored records into settings.parquet/csv, per_seed.parquet/csv, Markdown tables and "
                    "summary.json (definitions: docs/TABLES.md).")
    parser.add_argument("inputs", nargs="+", metavar="SCORED.jsonl", help="scored record files")
    parser.add_argument("--out-dir", required=True, help="output folder")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        aggregate(args.inputs, args.out_dir)
    except AggregateInputError as exc:
        print(f"latentmas aggregate: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK
