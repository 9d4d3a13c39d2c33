"""``latentmas score``: inference records in, scored records out. Inference never scores; this is the only place.

Each scored record is the inference record plus four keys (docs/DESIGN.md):

* ``prediction``: the extracted answer (a canonical number, a letter, or the program for code tasks), or null;
* ``correct``: bool;
* ``reason``: ``correct``, ``wrong``, ``no_answer``, ``inference_failed: <error>`` (a record with
  ``status == "failed"``: scored incorrect, never dropped), and for code the sandbox's status: ``failed_tests``,
  ``timeout``, ``memory``, ``killed``, ``error: <msg>``;
* ``extraction``: ``ours`` | ``strict`` | ``both``: which rules made the three keys above (``strict`` = the original
  LatentMAS rules, :mod:`latentmas.eval.strict`); with ``both`` the keys above are ours and ``strict_prediction``,
  ``strict_correct``, ``strict_reason`` are added.
* ``sandbox``: for code tasks the isolation mode the programs ran under (``bwrap+seccomp``, ``bwrap``,
  ``namespaces``, ``basic``: latentmas/eval/sandbox/isolation.py), null for the other tasks.

A record whose ``sample_id`` is not in the dataset, or whose ``gold`` differs from the dataset's, stops scoring with
an error naming the id: it means the records were made from another dataset file.

Numeric and choice scoring take milliseconds and write the output in one atomic step. Code scoring executes every
program, so it is resumable: each scored record is first appended durably to ``OUT.partial.jsonl`` (a file beside
``OUT``), a rerun skips the sample ids already there (unless their inference record changed), and the partial file is
renamed away into the atomic final output at the end. Delete the partial file to force a full rescore.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping

from latentmas.contracts import EXIT_BAD_INPUT, EXIT_OK, SCORED_RECORD_SCHEMA, TASK_NAMES, check
from latentmas.records import RecordWriter, read_records, repair, write_jsonl_atomic
from latentmas.eval.tasks import Task, get_task
from latentmas.eval.tasks.base import ScoreResult

log = logging.getLogger(__name__)

SCORE_KEYS = ("prediction", "correct", "reason", "sandbox", "extraction", "strict_prediction", "strict_correct",
              "strict_reason")
EXTRACTIONS = ("ours", "strict", "both")  # both = ours as prediction/correct/reason, plus strict_* keys


class ScoringError(ValueError):
    """Records and dataset do not fit together (unknown sample id, other task, changed gold, bad status)."""


def score_one(record: dict[str, Any], task: Task, data_records_by_id: Mapping[str, dict[str, Any]],
              extraction: str = "ours") -> dict[str, Any]:
    """One inference record -> the same record plus ``prediction``, ``correct``, ``reason``, ``extraction`` (and the
    ``strict_*`` keys with ``extraction="both"``)."""
    if extraction not in EXTRACTIONS:
        raise ScoringError(f"unknown extraction {extraction!r}; use one of {', '.join(EXTRACTIONS)}")
    sid = record.get("sample_id")
    if sid is None:
        raise ScoringError(f"an inference record has no sample_id (keys: {sorted(record)})")
    rec_task = record.get("task")
    if rec_task is not None and rec_task != task.name:
        raise ScoringError(f"record {sid!r} is for task {rec_task!r}, but scoring task {task.name!r}")
    item = data_records_by_id.get(sid)
    if item is None:
        raise ScoringError(
            f"sample id {sid!r} is not in the {task.name} dataset ({len(data_records_by_id)} items); "
            f"were the records made from another dataset file?"
        )
    gold = record.get("gold")
    if gold is not None and str(gold) != item["gold"]:
        raise ScoringError(
            f"record {sid!r} has gold {gold!r} but the dataset says {item['gold']!r}: the dataset changed since inference"
        )
    status = record.get("status", "ok")
    if status not in ("ok", "failed"):
        raise ScoringError(f"record {sid!r} has status {status!r}; expected 'ok' or 'failed'")
    failed = ScoreResult(None, False, f"inference_failed: {record.get('error') or 'no error message'}")
    text = record.get("final_text")
    result = failed if status == "failed" else (
        task.score_strict(text, item) if extraction == "strict" else task.score(text, item))
    out = {k: v for k, v in record.items() if k not in SCORE_KEYS}
    out.update(prediction=result.prediction, correct=bool(result.correct), reason=result.reason,
               sandbox=_sandbox_mode(task), extraction=extraction)
    if extraction == "both":
        st = failed if status == "failed" else task.score_strict(text, item)
        out.update(strict_prediction=st.prediction, strict_correct=bool(st.correct), strict_reason=st.reason)
    check(out, SCORED_RECORD_SCHEMA, part="score")  # what this stage adds; the rest is the runner's contract
    return out


def _sandbox_mode(task: Task) -> str | None:
    """The isolation mode this process runs code under (asked after the run: an "auto" fallback is decided)."""
    if task.kind != "code":
        return None
    from latentmas.eval import sandbox

    return sandbox.isolation_mode()


def score_records(records: Iterable[dict[str, Any]], task: Task | str,
                  data_records_by_id: Mapping[str, dict[str, Any]], extraction: str = "ours") -> list[dict[str, Any]]:
    """Score every record (in order); see the module docstring for the added keys and the errors.

    ``task`` is a :class:`~latentmas.eval.tasks.Task` or its name. No resume here: see :func:`score_resumable`.
    """
    if isinstance(task, str):
        task = get_task(task)
    from latentmas.progress import bar

    return [score_one(r, task, data_records_by_id, extraction)
            for r in bar(records, desc=f"score {task.name}", unit="record")]


def partial_path(out: str | os.PathLike) -> Path:
    """``x/shard-0-of-2.jsonl`` -> ``x/shard-0-of-2.partial.jsonl``."""
    p = Path(out)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(f"{stem}.partial.jsonl")


def _inference_part(scored: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scored.items() if k not in SCORE_KEYS}


def score_resumable(records: list[dict[str, Any]], task: Task, data_records_by_id: Mapping[str, dict[str, Any]],
                    out: str | os.PathLike, jobs: int = 1, extraction: str = "ours") -> list[dict[str, Any]]:
    """Score with a durable partial file beside ``out`` (for code tasks); write ``out`` atomically at the end."""
    ids = [r.get("sample_id") for r in records]
    dupes = [s for s, n in collections.Counter(ids).items() if n > 1]
    if dupes:
        raise ScoringError(f"duplicate sample ids in the input: {dupes[:5]}")
    # fail fast on ids/gold before spending minutes in the sandbox
    for r in records:
        if r.get("sample_id") not in data_records_by_id:
            score_one(r, task, data_records_by_id)  # raises the clear error
    part = partial_path(out)
    done: dict[str, dict[str, Any]] = {}
    for prev in repair(part):
        done[prev.get("sample_id")] = prev  # a rescored id appears twice: the last one wins
    results: dict[str, dict[str, Any]] = {}
    todo: list[dict[str, Any]] = []
    for r in records:
        prev = done.get(r["sample_id"])
        if prev is not None and prev.get("extraction", "ours") == extraction and _inference_part(prev) == _inference_part(r):
            results[r["sample_id"]] = prev
        else:
            todo.append(r)
    if results:
        log.info("%s: %d of %d records already scored in %s", task.name, len(results), len(records), part)
    from latentmas.progress import bar

    with RecordWriter(part) as writer, bar(total=len(todo), desc=f"score {task.name}", unit="program") as progress:
        if jobs <= 1:
            for r in todo:
                s = score_one(r, task, data_records_by_id, extraction)
                writer.write(s)
                results[r["sample_id"]] = s
                progress.update()
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for s in pool.map(lambda r: score_one(r, task, data_records_by_id, extraction), todo):
                    writer.write(s)
                    results[s["sample_id"]] = s
                    progress.update()
    ordered = [results[r["sample_id"]] for r in records]
    write_jsonl_atomic(out, ordered)
    part.unlink(missing_ok=True)
    return ordered


def _pick_task(arg_task: str | None, records: list[dict[str, Any]], data_ids: list[str] | None) -> Task:
    names = {r.get("task") for r in records if r.get("task") is not None}
    if arg_task is not None:
        task = get_task(arg_task)
        if names - {task.name}:
            raise ScoringError(f"--task {arg_task} but the records are for {sorted(names)}")
        return task
    if len(names) > 1:
        raise ScoringError(f"the records mix tasks {sorted(names)}; score one task per file")
    if names:
        return get_task(names.pop())
    prefixes = {i.split("/", 1)[0] for i in (data_ids or [])} | {
        str(r.get("sample_id", "")).split("/", 1)[0] for r in records}
    prefixes.discard("")
    if len(prefixes) == 1 and next(iter(prefixes)) in TASK_NAMES:
        return get_task(prefixes.pop())
    raise ScoringError("cannot tell the task from the records or the data; pass --task")


def score_file(in_path: str | os.PathLike, out_path: str | os.PathLike, data_path: str | os.PathLike | None = None,
               task_name: str | None = None, jobs: int = 1, extraction: str = "ours") -> list[dict[str, Any]]:
    """The ``latentmas score`` command as a function."""
    if not Path(in_path).is_file():
        raise ScoringError(f"input records file {in_path} does not exist")
    records = read_records(in_path)
    data: list[dict[str, Any]] | None = None
    if data_path is not None:
        from latentmas.eval.tasks.fetch import read_dataset

        data = read_dataset(data_path)
    task = _pick_task(task_name, records, [d["id"] for d in data] if data is not None else None)
    if data is None:
        data = task.load()
    by_id = {d["id"]: d for d in data}
    if task.kind == "code":
        scored = score_resumable(records, task, by_id, out_path, jobs=jobs, extraction=extraction)
    else:
        scored = score_records(records, task, by_id, extraction)
        write_jsonl_atomic(out_path, scored)
    reasons = collections.Counter(s["reason"].split(":")[0] for s in scored)
    n_ok = sum(s["correct"] for s in scored)
    log.info("%s: %d records, %d correct (%.1f%%, extraction %s); reasons %s -> %s", task.name, len(scored), n_ok,
             100.0 * n_ok / max(1, len(scored)), extraction, dict(reasons), out_path)
    if extraction == "both":
        n_strict = sum(s["strict_correct"] for s in scored)
        log.info("%s: %d correct under the original's (strict) extraction (%.1f%%)", task.name, n_strict,
                 100.0 * n_strict / max(1, len(scored)))
    return scored


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentmas score", description="score an inference records file")
    ap.add_argument("input", help="inference records (JSONL)")
    ap.add_argument("--data", default=None, help="dataset parquet from `latentmas fetch-data` (default: vendored data)")
    ap.add_argument("--task", default=None, choices=TASK_NAMES,
                    help="the task (default: the records' `task` field, else the ids' prefix)")
    ap.add_argument("--out", required=True, help="scored records (JSONL), written atomically")
    ap.add_argument("--jobs", type=int, default=1, help="code tasks: programs checked in parallel (default 1)")
    ap.add_argument("--extraction", choices=EXTRACTIONS, default="ours",
                    help="ours (default), strict (the original LatentMAS rules) or both (ours + strict_* keys)")
    args = ap.parse_args(argv)
    from latentmas.eval.tasks.base import DatasetRecordError, DatasetSourceError
    from latentmas.eval.tasks.fetch import DatasetArtifactError

    try:
        score_file(args.input, args.out, data_path=args.data, task_name=args.task, jobs=args.jobs,
                   extraction=args.extraction)
    except (ScoringError, DatasetArtifactError, DatasetSourceError, DatasetRecordError) as exc:
        print(f"latentmas score: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK
