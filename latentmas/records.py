"""JSONL records that survive crashes.

Every stage writes one JSON object per line. Two rules make SIGKILL at any instant harmless:

* appended records are written as one ``write`` of a complete line followed by flush + fsync, so a reader sees
  either the whole record or a trailing fragment without its newline;
* a trailing fragment (no final newline, or a line that is not valid JSON) is discarded with a warning when the file
  is reopened, and truncated away before anything new is appended.

Whole-file outputs (scores, tables, datasets) go through :func:`atomic_path`: written to a temp file beside the
target and renamed into place, so Snakemake never sees a half-written output.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)


class RecordFileError(ValueError):
    """A records file is corrupt somewhere other than its last line."""


def _scan(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Return the complete records and the byte offset where valid content ends."""
    records: list[dict[str, Any]] = []
    good_end = 0
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        is_last = i == len(lines) - 1
        if is_last:
            if raw.strip():
                log.warning("%s: discarding a partial trailing line (%d bytes, no newline)", path, len(raw))
            break
        end = pos + len(raw) + 1
        if raw.strip():
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                if all(not rest.strip() for rest in lines[i + 1:]):
                    log.warning("%s: discarding an unreadable trailing line %d (%s)", path, i + 1, exc)
                    break
                raise RecordFileError(f"{path}: line {i + 1} is not valid JSON ({exc}) and is not the last line") from exc
            records.append(obj)
        pos = end
        good_end = end
    return records, good_end


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (a missing file reads as empty)."""
    p = Path(path)
    if not p.exists():
        return []
    return _scan(p)[0]


def iter_records(paths: Iterable[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    for p in paths:
        yield from read_records(p)


def repair(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Truncate a trailing fragment in place and return the complete records (for resuming)."""
    p = Path(path)
    if not p.exists():
        return []
    records, good_end = _scan(p)
    if good_end != p.stat().st_size:
        with open(p, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return records


class RecordWriter:
    """Append-only writer: one complete line per record, durable before the call returns."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it into place, on error remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs on a shared filesystem must be readable
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
    return n
