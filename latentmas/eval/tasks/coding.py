"""Code tasks: HumanEval+ and MBPP+ (evalplus), scored by running the program in :mod:`latentmas.eval.sandbox`.

The common record keeps the whole evalplus problem (task_id, prompt, entry_point, canonical_solution, base_input,
plus_input, atol, contract, and MBPP+'s assertion) in ``extras``, exactly as the vendored release file has it, so a
scorer needs nothing but the dataset artifact. ``gold`` is the entry point (the function the tests call).

From the reply to a program (:meth:`CodeTask.solution`): the last fenced python block (see
:func:`latentmas.eval.extract.extract_code`); for HumanEval+, if the reply has no ``def <entry_point>(`` the prompt (the
signature and docstring) is put in front, so a reply that only writes the body still runs, and import lines of the
prompt that the reply lacks are put in front (a reply that re-writes ``def f(xs: List[int])`` without
``from typing import List`` would otherwise fail on a detail the task gave it).

MBPP+ inputs stay in the release file's JSON form (lists where the tests use tuples, strings for complex numbers...)
all the way to the sandbox: :func:`latentmas.eval.sandbox.check_solution` applies evalplus's ``mbpp_deserialize_inputs``
itself (once; that function is not idempotent, e.g. for Mbpp/115), so :func:`evalplus_problem` must not.
"""
from __future__ import annotations

import copy
import re
from typing import Any

from latentmas.eval import strict
from latentmas.eval.extract import extract_code
from latentmas.eval.tasks.base import DatasetRecordError, DatasetSourceError, HubSource, ScoreResult, Task, VendoredFile

_CODE_INSTRUCTION = (
    "Write a complete, self-contained Python solution: the full function definition with the exact name and "
    "parameters asked for, plus any imports or helper functions it needs. Give the final program in a single "
    "```python code block and do not include example calls or tests."
)

_REQUIRED = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol", "contract")


class CodeTask(Task):
    kind = "code"
    answer_instruction = _CODE_INSTRUCTION
    evalplus_dataset = ""  # "humaneval" | "mbpp": the sandbox's name for the dataset
    required: tuple[str, ...] = _REQUIRED

    def normalise(self, raw: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        task_id = self.field(raw, "task_id", where)
        rid = f"{self.name}/{task_id}"
        for key in self.required:
            if key in ("base_input", "plus_input"):
                # a list of argument lists; MBPP+ 793 has plus_input == {} (no extra inputs) in the release file
                self.field(raw, key, where, rid, kind=(list, dict), nonempty=False)
            elif key == "atol":
                self.field(raw, key, where, rid, kind=(int, float))
            elif key == "contract":
                self.field(raw, key, where, rid, nonempty=False)
            else:
                self.field(raw, key, where, rid)
        problem = dict(raw)
        return self.record(rid, raw["prompt"], None, raw["entry_point"], problem)

    def _hub_rows(self):  # type: ignore[override]
        assert self.hub is not None
        raise DatasetSourceError(
            f"{self.name}: the Hub dataset {self.hub.dataset_id} holds the original-format problems without the "
            f"plus test inputs (base_input/plus_input) the scorer needs. Use the vendored file (no --source) or pass "
            f"the evalplus release file as --source ({self.source_note})."
        )

    # the program a reply stands for
    def solution(self, text: str | None, record: dict[str, Any] | None = None) -> str | None:
        code = extract_code(text)
        if code is None or record is None:
            return code
        return self.complete(code, record)

    def complete(self, code: str, record: dict[str, Any]) -> str:
        return code

    def extract(self, text: str | None, record: dict[str, Any] | None = None) -> str | None:
        return self.solution(text, record)

    def score(self, text: str | None, record: dict[str, Any]) -> ScoreResult:
        return self.run_program(self.solution(text, record), record)

    def score_strict(self, text: str | None, record: dict[str, Any]) -> ScoreResult:
        """The original LatentMAS rule for code: only the last closed ```python block, run as it is (no prompt or
        imports put in front). The tests run are still evalplus's base + plus inputs (docs/TASKS.md)."""
        return self.run_program(strict.python_block(text), record)

    def run_program(self, code: str | None, record: dict[str, Any]) -> ScoreResult:
        if code is None:
            return ScoreResult(None, False, "no_answer")
        from latentmas.eval import sandbox  # imported late: only code scoring needs it

        verdict = sandbox.check_solution(code, evalplus_problem(record, self.evalplus_dataset), self.evalplus_dataset)
        if verdict.passed:
            return ScoreResult(code, True, "correct")
        status = verdict.status or "error: no status from sandbox"
        if status == "pass":  # inconsistent verdict: never count it as a pass
            status = "error: sandbox said pass but passed=False"
        return ScoreResult(code, False, status)

    def is_correct(self, prediction: str, record: dict[str, Any]) -> bool:  # pragma: no cover - score() overrides
        raise NotImplementedError("code answers are checked by running them: use score()")


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, flags=re.MULTILINE) is not None


_IMPORT_LINE = re.compile(r"^(?:import\s+\S.*|from\s+\S+\s+import\s+.+)$")


class HumanEvalPlus(CodeTask):
    name = "humanevalplus"
    evalplus_dataset = "humaneval"
    hub = HubSource("evalplus/humanevalplus", None, "test",
                    note="original-format rows only; the plus inputs ship in the evalplus release file")
    vendored = VendoredFile("humanevalplus/HumanEvalPlus.jsonl.gz",
                            "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101", 164)
    source_note = "vendored: HumanEvalPlus.jsonl.gz v0.1.10 from evalplus/humanevalplus_release (what evalplus downloads)"

    def user_prompt(self, record: dict[str, Any], style: str = "ours") -> str:
        self.check_style(style)
        return (
            f"Complete the Python function `{record['gold']}` below so that it does what its docstring describes.\n\n"
            f"```python\n{record['question'].rstrip()}\n```"
        )

    def complete(self, code: str, record: dict[str, Any]) -> str:
        prompt: str = record["extras"]["prompt"]
        entry_point: str = record["extras"]["entry_point"]
        if not _defines(code, entry_point):
            return prompt + code
        present = {ln.strip() for ln in code.splitlines()}
        missing = [ln.strip() for ln in prompt.splitlines() if _IMPORT_LINE.match(ln.strip()) and ln.strip() not in present]
        if missing:
            return "\n".join(missing) + "\n" + code
        return code


class MbppPlus(CodeTask):
    name = "mbppplus"
    evalplus_dataset = "mbpp"
    required = _REQUIRED + ("assertion",)
    hub = HubSource("evalplus/mbppplus", None, "test",
                    note="original-format rows only; the plus inputs ship in the evalplus release file")
    vendored = VendoredFile("mbppplus/MbppPlus.jsonl.gz",
                            "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63", 378)
    source_note = "vendored: MbppPlus.jsonl.gz v0.2.0 from evalplus/mbppplus_release (what evalplus downloads)"

    prompt_styles = ("ours", "original")

    def user_prompt(self, record: dict[str, Any], style: str = "ours") -> str:
        """ours: the release file's docstring (the task plus one example assert). original: the task text and the
        three asserts of MBPP's test_list (the release file's ``assertion``), as the original LatentMAS showed them."""
        self.check_style(style)
        spec = record["question"].strip()
        if spec.startswith('"""') and spec.endswith('"""') and len(spec) >= 6:
            spec = spec[3:-3].strip()
        if style == "original":
            task_text = "\n".join(ln for ln in spec.splitlines() if not ln.lstrip().startswith("assert "))
            asserts = [ln.strip() for ln in record["extras"].get("assertion", "").splitlines()
                       if ln.strip().startswith("assert ")][:3]
            return (f"{task_text.strip()}\n\nWrite it as a Python function named `{record['gold']}`. It will be "
                    f"tested with checks like these:\n" + "\n".join(asserts))
        return f"{spec}\n\nWrite it as a Python function named `{record['gold']}`; the assert above shows how it is called."


def evalplus_problem(record: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The evalplus problem dict handed to the sandbox: a copy of ``extras`` in the release file's (JSON) form.

    ``dataset`` ("humaneval" | "mbpp") is accepted for symmetry with the sandbox call; inputs are *not*
    deserialised here (the sandbox does it, see the module docstring).
    """
    if dataset not in ("humaneval", "mbpp"):
        raise ValueError(f"dataset must be 'humaneval' or 'mbpp', got {dataset!r}")
    problem = copy.deepcopy(record["extras"])
    for key in ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol"):
        if key not in problem:
            raise DatasetRecordError(record["id"].split("/", 1)[0], f"dataset record {record['id']}", f"extras.{key}",
                                     "is missing", record["id"])
    return problem
