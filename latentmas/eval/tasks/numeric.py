"""Tasks whose answer is a number: GSM8K, AIME 2024, AIME 2025.

Gold answers are stored in canonical number form (:func:`latentmas.eval.extract.format_number`), predictions are compared
as exact fractions, so ``18``, ``18.0``, ``$18`` and ``\\boxed{18}`` all match a gold of ``18``.
"""
from __future__ import annotations

import re
from typing import Any

from latentmas.eval.extract import extract_number, format_number, numbers_equal, parse_number
from latentmas.eval import strict
from latentmas.eval.tasks.base import DatasetRecordError, HubSource, ScoreResult, Task, VendoredFile

_NUMERIC_INSTRUCTION = (
    "Solve it step by step, then write the final numeric answer inside \\boxed{} at the end."
)


class NumericTask(Task):
    kind = "numeric"
    answer_instruction = _NUMERIC_INSTRUCTION

    def user_prompt(self, record: dict[str, Any], style: str = "ours") -> str:
        self.check_style(style)
        return record["question"]

    def extract(self, text: str | None, record: dict[str, Any] | None = None) -> str | None:
        return extract_number(text)

    def score_strict(self, text: str | None, record: dict[str, Any]) -> ScoreResult:
        """The original LatentMAS rule for GSM8K: its extracted string equals the gold string (docs/TASKS.md)."""
        pred = strict.number_answer(text)
        if pred is None:
            return ScoreResult(None, False, "no_answer")
        ok = pred == strict.gsm8k_gold(record)
        return ScoreResult(pred, ok, "correct" if ok else "wrong")

    def is_correct(self, prediction: str, record: dict[str, Any]) -> bool:
        return numbers_equal(prediction, record["gold"])


class GSM8K(NumericTask):
    name = "gsm8k"
    hub = HubSource("openai/gsm8k", "main", "test")
    vendored = VendoredFile("gsm8k/test.jsonl", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 1319)
    source_note = "vendored: the test split from openai/grade-school-math (the files openai/gsm8k was built from)"

    def normalise(self, raw: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        rid = f"gsm8k/{position:04d}"
        question = self.field(raw, "question", where, rid)
        answer = self.field(raw, "answer", where, rid)
        if "####" not in answer:
            raise DatasetRecordError(self.name, where, "answer", "has no '#### <number>' final line", rid)
        solution, _, final = answer.rpartition("####")
        value = parse_number(final.strip().replace(",", ""))
        if value is None:
            raise DatasetRecordError(self.name, where, "answer", f"ends in '#### {final.strip()}', not a number", rid)
        # "final": the raw text after ####, for extraction: strict (the original parsed its gold from it)
        return self.record(rid, question.strip(), None, format_number(value),
                           {"solution": solution.strip(), "final": final.strip()})


class AIME(NumericTask):
    answer_instruction = (
        "Solve it step by step; the answer is an integer from 0 to 999. Write the final answer inside \\boxed{} "
        "at the end."
    )
    use_row_id = False  # aime2024: the dataset's own problem id; aime2025: the position in the file

    def score_strict(self, text: str | None, record: dict[str, Any]) -> ScoreResult:
        """The original LatentMAS rule for AIME: ``int()`` of its extracted string equals ``int()`` of the gold."""
        pred = strict.number_answer(text)
        if pred is None:
            return ScoreResult(None, False, "no_answer")
        try:
            ok = int(pred) == int(record["gold"])
        except ValueError:
            return ScoreResult(pred, False, "wrong")  # the original: "Value error in parsing answer", incorrect
        return ScoreResult(pred, ok, "correct" if ok else "wrong")

    def normalise(self, raw: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        if self.use_row_id:
            row_id = self.field(raw, "id", where, None, kind=(int, str))
            rid = f"{self.name}/{row_id}"
        else:
            rid = f"{self.name}/{position:04d}"
        question = self.field(raw, "problem", where, rid)
        answer = self.field(raw, "answer", where, rid, kind=(int, str))
        text = str(answer).strip()
        if not re.fullmatch(r"\d{1,3}", text):
            raise DatasetRecordError(self.name, where, "answer", f"{text!r} is not an integer 0..999", rid)
        extras: dict[str, Any] = {}
        if raw.get("url"):
            extras["url"] = raw["url"]
        return self.record(rid, question.strip(), None, str(int(text)), extras)


class AIME2024(AIME):
    name = "aime2024"
    hub = HubSource("HuggingFaceH4/aime_2024", None, "train")
    vendored = VendoredFile("aime/aime2024/test.jsonl",
                            "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac", 30)
    source_note = "vendored: the 30 AIME 2024 rows (ids 60-89) of AI-MO/aimo-validation-aime, as HuggingFaceH4/aime_2024"
    use_row_id = True


class AIME2025(AIME):
    name = "aime2025"
    hub = HubSource("yentinglin/aime_2025", None, "train",
                    note="ids are positions in the source; the Hub split's order may differ from the vendored file")
    vendored = VendoredFile("aime/aime2025/test.jsonl",
                            "5ee6e9fb9b8c0408c8e3591709b6927063abf73ed238c029167a7eff7376cca0", 30)
    source_note = "vendored: AIME 2025 I+II (30 problems, answers identical to yentinglin/aime_2025)"
