"""What every task has in common: where its data comes from, the common record, errors, and scoring.

A task turns *raw rows* (whatever its source file or Hub split holds) into *common records*::

    {"id": "gsm8k/0007", "question": "...", "choices": None | ["...", ...], "gold": "18", "extras": {...}}

and turns a model's final text back into a prediction and a verdict (:meth:`Task.score`). The subclasses in
``numeric.py``, ``choice.py`` and ``coding.py`` only say how to read one raw row and how to phrase the question.

Data sources, in the order a user would reach for them:

* ``source=None``: the copy vendored under ``data/`` (sha256-checked), located next to the package (editable install)
  or in ``$LATENTMAS_DATA_DIR``;
* ``source="hub"``: the task's declared Hugging Face dataset via the optional ``datasets`` package;
* ``source=PATH``: a user file in the same raw format as the vendored one (GPQA: the official CSV).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

log = logging.getLogger(__name__)

KINDS = ("numeric", "choice", "code")


class UnknownTaskError(ValueError):
    """A task name that is not one of :data:`latentmas.eval.tasks.TASK_NAMES`."""

    def __init__(self, name: object, known: Iterable[str]):
        self.name = name
        self.known = tuple(known)
        super().__init__(f"unknown task {name!r}; known tasks: {', '.join(self.known)}")


class DatasetRecordError(ValueError):
    """One raw record is malformed: says where (file + line/row, and the record id when known) and which field."""

    def __init__(self, task: str, where: str, field: str, problem: str = "is missing", record_id: str | None = None):
        self.task = task
        self.where = where
        self.field = field
        self.problem = problem
        self.record_id = record_id
        rid = f" (record id {record_id!r})" if record_id is not None else ""
        super().__init__(f"{task}: {where}{rid}: field {field!r} {problem}")


class DatasetSourceError(ValueError):
    """The requested data source cannot be used (missing file, no vendored copy, ``datasets`` not installed...)."""


class ScoreResult(NamedTuple):
    prediction: str | None
    correct: bool
    reason: str  # correct | wrong | no_answer | (code) failed_tests | timeout | memory | killed | error: ...


@dataclass(frozen=True)
class HubSource:
    """Where the task lives on the Hugging Face Hub (for users on connected clusters)."""

    dataset_id: str
    config: str | None
    split: str
    # A commit sha pins the exact files. None = the default branch, unpinned: this project was built offline and
    # could not resolve the Hub's commit shas; the vendored copies under data/ are the pinned reference instead.
    revision: str | None = None
    gated: bool = False
    note: str = ""


@dataclass(frozen=True)
class VendoredFile:
    path: str  # relative to the data dir
    sha256: str
    records: int


def repo_data_dir() -> Path:
    """``$LATENTMAS_DATA_DIR`` if set, else ``data/`` at the repository root (the package is installed editable)."""
    env = os.environ.get("LATENTMAS_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "data"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


RawRow = tuple[str, dict[str, Any]]  # (where, row): where is "FILE line N" / "FILE row N" / "HUB row N"


def read_raw_file(path: Path) -> list[RawRow]:
    """Rows of a ``.jsonl``/``.jsonl.gz`` (one object per line), ``.json`` (an array) or ``.csv`` file."""
    name = path.name.lower()
    rows: list[RawRow] = []
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetSourceError(f"{path} line {n}: not valid JSON ({exc})") from exc
                if not isinstance(obj, dict):
                    raise DatasetSourceError(f"{path} line {n}: expected a JSON object, got {type(obj).__name__}")
                rows.append((f"{path} line {n}", obj))
    elif name.endswith(".json"):
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, list):
            raise DatasetSourceError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
        for n, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise DatasetSourceError(f"{path} item {n}: expected a JSON object, got {type(obj).__name__}")
            rows.append((f"{path} item {n}", obj))
    elif name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for n, obj in enumerate(csv.DictReader(fh), start=2):  # line 1 is the header
                rows.append((f"{path} row {n}", dict(obj)))
    else:
        raise DatasetSourceError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz, .json or .csv)")
    return rows


class Task:
    """One benchmark. Subclasses set the class attributes and implement :meth:`normalise` and :meth:`user_prompt`."""

    name: str = ""
    kind: str = ""  # numeric | choice | code
    hub: HubSource | None = None
    vendored: VendoredFile | None = None
    answer_instruction: str = ""
    source_note: str = ""  # one line for docs/errors: what the offline source is
    # Bump prompt_version whenever user_prompt()'s wording changes: it is part of every record's config hash, so a
    # changed prompt never resumes onto records made with the old one (the answer instruction is hashed as is).
    prompt_version: str = "1"
    prompt_styles: tuple[str, ...] = ("ours",)  # "original": the original LatentMAS presentation, where it differs

    # ----------------------------------------------------------------------------------------------------- data

    def load(self, source: str | os.PathLike | None = None) -> list[dict[str, Any]]:
        """Common records in the task's canonical order (see the module docstring for ``source``)."""
        rows = self._raw_rows(source)
        records: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        for position, (where, raw) in enumerate(rows):
            rec = self.normalise(raw, position, where)
            if rec["id"] in seen:
                raise DatasetRecordError(self.name, where, "id", f"duplicates {seen[rec['id']]}", rec["id"])
            seen[rec["id"]] = where
            records.append(rec)
        if not records:
            raise DatasetSourceError(f"{self.name}: the source {source or 'vendored file'} holds no records")
        return records

    def _raw_rows(self, source: str | os.PathLike | None) -> list[RawRow]:
        if source is None:
            return self._vendored_rows()
        if str(source) == "hub":
            return self._hub_rows()
        path = Path(source).expanduser()
        if not path.is_file():
            raise DatasetSourceError(f"{self.name}: source file {str(path)!r} does not exist")
        return read_raw_file(path)

    def vendored_path(self) -> Path:
        if self.vendored is None:
            raise DatasetSourceError(self.no_vendored_message())
        return repo_data_dir() / self.vendored.path

    def no_vendored_message(self) -> str:
        return f"{self.name}: no vendored copy; pass a file path or 'hub' as the source"

    def _vendored_rows(self) -> list[RawRow]:
        path = self.vendored_path()
        assert self.vendored is not None
        if not path.is_file():
            raise DatasetSourceError(
                f"{self.name}: vendored file {path} not found. The data/ folder of the repository is looked up next to "
                f"the package (editable install); set LATENTMAS_DATA_DIR to the data/ folder otherwise."
            )
        digest = sha256_file(path)
        if digest != self.vendored.sha256:
            raise DatasetSourceError(
                f"{self.name}: vendored file {path} has sha256 {digest}, expected {self.vendored.sha256} "
                f"(see data/README.md); restore it from git"
            )
        return read_raw_file(path)

    def _hub_rows(self) -> list[RawRow]:
        hub = self.hub
        if hub is None:
            raise DatasetSourceError(f"{self.name}: no Hugging Face source is declared for this task. {self.source_note}")
        try:
            import datasets  # optional dependency: pip install 'latentmas[hub]'
        except ImportError as exc:
            raise DatasetSourceError(
                f"{self.name}: source 'hub' needs the `datasets` package (pip install 'latentmas[hub]')"
            ) from exc
        if hub.revision is None:
            log.warning("%s: loading %s from the Hub without a pinned revision", self.name, hub.dataset_id)
        try:
            ds = datasets.load_dataset(hub.dataset_id, hub.config, split=hub.split, revision=hub.revision)
        except Exception as exc:
            gated = " It is gated: accept its terms on the Hub and set HF_TOKEN." if hub.gated else ""
            raise DatasetSourceError(
                f"{self.name}: could not load {hub.dataset_id} ({hub.config}, {hub.split}) from the Hub: {exc}.{gated}"
            ) from exc
        where = f"hub:{hub.dataset_id}/{hub.config or ''}:{hub.split}"
        return [(f"{where} row {i}", dict(row)) for i, row in enumerate(ds)]

    def normalise(self, raw: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        """One raw row -> one common record; raise :class:`DatasetRecordError` if it is malformed."""
        raise NotImplementedError

    # helpers for normalise()
    def field(self, raw: dict[str, Any], key: str, where: str, record_id: str | None = None,
              kind: type | tuple[type, ...] = str, nonempty: bool = True) -> Any:
        if key not in raw or raw[key] is None:
            raise DatasetRecordError(self.name, where, key, "is missing", record_id)
        value = raw[key]
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise DatasetRecordError(self.name, where, key, f"should be {want}, got {type(value).__name__}", record_id)
        if nonempty and isinstance(value, (str, list, dict)) and not (value.strip() if isinstance(value, str) else value):
            raise DatasetRecordError(self.name, where, key, "is empty", record_id)
        return value

    @staticmethod
    def record(id_: str, question: str, choices: list[str] | None, gold: str, extras: dict[str, Any]) -> dict[str, Any]:
        return {"id": id_, "question": question, "choices": choices, "gold": gold, "extras": extras}

    # ----------------------------------------------------------------------------------------------- prompting

    def user_prompt(self, record: dict[str, Any], style: str = "ours") -> str:
        raise NotImplementedError

    def check_style(self, style: str) -> str:
        if style not in self.prompt_styles:
            raise ValueError(f"{self.name}: unknown prompt style {style!r} (this task has: "
                             f"{', '.join(self.prompt_styles)})")
        return style

    def prompt_id(self, style: str = "ours") -> str:
        """The per-task prompt version string recorded (and hashed) with every record, e.g. ``mbppplus/v1/original#3f2a``.

        Carries the explicit version, the style and a digest of the answer instruction, so editing either wording
        changes the config hash of new records.
        """
        self.check_style(style)
        digest = hashlib.sha256(self.answer_instruction.encode()).hexdigest()[:8]
        return f"{self.name}/v{self.prompt_version}/{style}#{digest}"

    # ------------------------------------------------------------------------------------------------- scoring

    def extract(self, text: str | None, record: dict[str, Any] | None = None) -> str | None:
        raise NotImplementedError

    def is_correct(self, prediction: str, record: dict[str, Any]) -> bool:
        raise NotImplementedError

    def score_strict(self, text: str | None, record: dict[str, Any]) -> ScoreResult:
        """Score as the original LatentMAS code did for this task (``extraction: strict``, :mod:`latentmas.eval.strict`)."""
        raise NotImplementedError

    def score(self, text: str | None, record: dict[str, Any]) -> ScoreResult:
        prediction = self.extract(text, record)
        if prediction is None:
            return ScoreResult(None, False, "no_answer")
        ok = bool(self.is_correct(prediction, record))
        return ScoreResult(prediction, ok, "correct" if ok else "wrong")

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.kind})>"
