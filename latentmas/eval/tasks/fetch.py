"""``latentmas fetch-data``: one task's test items -> ``results/data/{task}.parquet`` (+ ``.sha256`` sidecar).

The parquet is the dataset artifact every later stage reads (see docs/DESIGN.md): columns ``id``, ``question``,
``choices`` (list[str], null unless multiple choice), ``gold``, ``extras`` (a JSON string). It is written through a
temp file and renamed, then the sidecar (``<sha256>  <file name>``, the ``sha256sum`` format) is written the same
way. With a given polars version the bytes are identical run to run (no timestamps, fixed compression and row-group
settings, keys of ``extras`` sorted), so the sidecar changes only when the data does.

:func:`read_dataset` is the reader for the runner and the scorer: rows as the common record dicts, ``extras``
decoded, and the sidecar checked when it is present.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from latentmas.records import atomic_path
from latentmas.contracts import EXIT_BAD_INPUT
from latentmas.eval.tasks import TASK_NAMES, get_task
from latentmas.eval.tasks.base import DatasetRecordError, DatasetSourceError, sha256_file

log = logging.getLogger(__name__)

SCHEMA = {
    "id": pl.String,
    "question": pl.String,
    "choices": pl.List(pl.String),
    "gold": pl.String,
    "extras": pl.String,
}


class DatasetArtifactError(ValueError):
    """A dataset parquet is missing, has the wrong columns, or does not match its sha256 sidecar."""


def sidecar_path(parquet_path: str | os.PathLike) -> Path:
    p = Path(parquet_path)
    return p.with_name(p.name + ".sha256")


def write_dataset(records: Iterable[dict[str, Any]], out: str | os.PathLike) -> str:
    """Write the records as the dataset parquet + sidecar (both atomically); return the sha256 hex."""
    recs = list(records)
    frame = pl.DataFrame(
        {
            "id": [r["id"] for r in recs],
            "question": [r["question"] for r in recs],
            "choices": [r["choices"] for r in recs],
            "gold": [r["gold"] for r in recs],
            "extras": [json.dumps(r["extras"], ensure_ascii=False, sort_keys=True) for r in recs],
        },
        schema=SCHEMA,
    )
    out = Path(out)
    with atomic_path(out) as tmp:
        frame.write_parquet(tmp, compression="zstd", compression_level=10, statistics=False,
                            row_group_size=max(1, len(recs)))
        digest = sha256_file(tmp)
    with atomic_path(sidecar_path(out)) as tmp:
        tmp.write_text(f"{digest}  {out.name}\n", encoding="utf-8")
    return digest


def read_dataset(parquet_path: str | os.PathLike, verify: bool = True) -> list[dict[str, Any]]:
    """Rows of a dataset parquet as common records (``extras`` decoded, ``choices`` a list or ``None``).

    With ``verify`` (default) the file's sha256 must match the sidecar when one exists next to it.
    """
    path = Path(parquet_path)
    if not path.is_file():
        raise DatasetArtifactError(f"dataset file {path} does not exist (make it with `latentmas fetch-data`)")
    side = sidecar_path(path)
    if verify and side.is_file():
        want = side.read_text(encoding="utf-8").split()[0] if side.read_text(encoding="utf-8").strip() else ""
        got = sha256_file(path)
        if got != want:
            raise DatasetArtifactError(f"{path}: sha256 {got} does not match its sidecar {side} ({want or 'empty'})")
    frame = pl.read_parquet(path)
    missing = [c for c in SCHEMA if c not in frame.columns]
    if missing:
        raise DatasetArtifactError(f"{path}: missing column(s) {missing}; columns are {frame.columns}")
    out = []
    for row in frame.select(list(SCHEMA)).iter_rows(named=True):
        row["extras"] = json.loads(row["extras"]) if row["extras"] else {}
        out.append(row)
    return out


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentmas fetch-data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, choices=TASK_NAMES)
    ap.add_argument("--source", default=None,
                    help="a file in the task's raw format, or 'hub' (needs `datasets`); default: the vendored copy")
    ap.add_argument("--limit", type=int, default=None, help="keep only the first N items (canonical order)")
    ap.add_argument("--out", required=True, help="output parquet, e.g. results/data/gsm8k.parquet")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    task = get_task(args.task)
    try:
        records = task.load(args.source)
    except (DatasetSourceError, DatasetRecordError) as exc:
        print(f"latentmas fetch-data: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    total = len(records)
    if args.limit is not None:
        records = records[: args.limit]
    digest = write_dataset(records, args.out)
    log.info("%s: wrote %d of %d records to %s (sha256 %s)", task.name, len(records), total, args.out, digest)
    return 0
