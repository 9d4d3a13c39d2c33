"""Multiple-choice tasks: ARC-Easy, ARC-Challenge, MedQA (LatentMAS's 300-item subset), GPQA-Diamond.

Every record carries its options in letter order (``choices[0]`` is A) and a gold letter. What differs is how the
raw rows spell that:

* ARC: ``choices = {"text": [...], "label": [...]}`` with labels ``A..E`` or, for some items, ``1..4``; numeric labels
  are mapped to letters by position, the option order is kept. The original AI2 layout
  (``question = {"stem", "choices": [{"text", "label"}]}``) is read too.
* MedQA: ``options`` is a list ``["A. text", ...]`` (or a dict ``{"A": text}``) and ``answer`` is the *text* of the
  right option, mapped to its letter; the subset's ``question`` repeats the option block twice, which is stripped.
* GPQA: the correct answer and three distractors are separate columns; they are put in a deterministic per-record
  order (:func:`gpqa_order`) so the gold letter is spread over A-D instead of always being A.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

from latentmas.eval import strict
from latentmas.eval.extract import extract_choice, letters_for
from latentmas.eval.tasks.base import DatasetRecordError, DatasetSourceError, HubSource, ScoreResult, Task, VendoredFile

_CHOICE_INSTRUCTION = (
    "Reason briefly about the options, then write the letter of the single best option inside \\boxed{} at the end."
)


class ChoiceTask(Task):
    kind = "choice"
    answer_instruction = _CHOICE_INSTRUCTION
    max_choices = 5  # used only when extract() is called without a record

    def user_prompt(self, record: dict[str, Any], style: str = "ours") -> str:
        self.check_style(style)
        options = "\n".join(f"{letter}. {text}" for letter, text in zip(letters_for(len(record["choices"])),
                                                                           record["choices"]))
        return f"{record['question']}\n\n{options}"

    def score_strict(self, text: str | None, record: dict[str, Any]) -> ScoreResult:
        """The original LatentMAS rule for choice tasks: its extracted string equals the lower-cased gold letter."""
        pred = strict.number_answer(text)
        if pred is None:
            return ScoreResult(None, False, "no_answer")
        ok = pred == strict.choice_gold(record)
        return ScoreResult(pred, ok, "correct" if ok else "wrong")

    def extract(self, text: str | None, record: dict[str, Any] | None = None) -> str | None:
        if record is not None:
            return extract_choice(text, len(record["choices"]), record["choices"])
        return extract_choice(text, self.max_choices)

    def is_correct(self, prediction: str, record: dict[str, Any]) -> bool:
        return prediction == record["gold"]


# ------------------------------------------------------------------------------------------------------------ ARC


class ARC(ChoiceTask):
    max_choices = 5

    def normalise(self, raw: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        source_id = self.field(raw, "id", where)
        rid = f"{self.name}/{source_id}"
        q = self.field(raw, "question", where, rid, kind=(str, dict))
        if isinstance(q, dict):  # original AI2 layout
            question = self.field(q, "stem", where, rid)
            items = self.field(q, "choices", where, rid, kind=list)
            try:
                texts = [c["text"] for c in items]
                labels = [c["label"] for c in items]
            except (KeyError, TypeError) as exc:
                raise DatasetRecordError(self.name, where, "question.choices", f"has an item without text/label ({exc})",
                                         rid) from exc
        else:
            question = q
            ch = self.field(raw, "choices", where, rid, kind=dict)
            texts = self.field(ch, "text", where, rid, kind=list)
            labels = self.field(ch, "label", where, rid, kind=list)
        if len(texts) != len(labels) or not 2 <= len(texts) <= 26:
            raise DatasetRecordError(self.name, where, "choices", f"has {len(texts)} texts but {len(labels)} labels", rid)
        letters = letters_for(len(labels))
        labels = [str(x).strip() for x in labels]
        if labels == list(letters):
            mapping = dict(zip(labels, letters))
        elif labels == [str(i) for i in range(1, len(labels) + 1)]:
            mapping = dict(zip(labels, letters))  # 1..n -> A..
        else:
            raise DatasetRecordError(self.name, where, "choices.label", f"{labels} are neither A.. nor 1.. in order", rid)
        key = str(self.field(raw, "answerKey", where, rid)).strip()
        if key not in mapping:
            raise DatasetRecordError(self.name, where, "answerKey", f"{key!r} is not one of the labels {labels}", rid)
        choices = [str(t).strip() for t in texts]
        return self.record(rid, question.strip(), choices, mapping[key], {"labels": labels})


class ARCEasy(ARC):
    name = "arc_easy"
    hub = HubSource("allenai/ai2_arc", "ARC-Easy", "test")
    vendored = VendoredFile("arc/ARC-Easy-test.jsonl",
                            "c9757629cb775832c3c67b4aa1425e3eda01708a2b02fa229b0c3ed1bcb70fe1", 2376)
    source_note = "vendored: ARC-Easy test rows in the allenai/ai2_arc schema (identical to AI2's ARC-V1-Feb2018)"


class ARCChallenge(ARC):
    name = "arc_challenge"
    hub = HubSource("allenai/ai2_arc", "ARC-Challenge", "test")
    vendored = VendoredFile("arc/ARC-Challenge-test.jsonl",
                            "c0e7635ee91b9ca47bf388f1f6cd5140fda083a71dccda44de72c364645df3f3", 1172)
    source_note = "vendored: ARC-Challenge test rows in the allenai/ai2_arc schema (identical to AI2's ARC-V1-Feb2018)"


# ---------------------------------------------------------------------------------------------------------- MedQA

_OPTION_RE = re.compile(r"\s*\(?([A-Z])\)?[.:)]\s*(.*)", re.DOTALL)


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().casefold()


class MedQA(ChoiceTask):
    name = "medqa"
    max_choices = 5
    hub = None
    vendored = VendoredFile("medqa/medqa.json", "d4f09708b623a7750013b22c607495eb8872bbef7a3f50990b7279c8fd87ec8d", 300)
    source_note = ("vendored only: the 300-question MedQA (USMLE, 4 options) file shipped with the LatentMAS code "
                   "(Gen-Verse/LatentMAS data/medqa.json), not the full 1,273-question test set; no Hub mirror of "
                   "this subset is declared")

    def normalise(self, raw: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        rid = f"medqa/{position:04d}"
        options = self.field(raw, "options", where, rid, kind=(list, dict))
        if isinstance(options, dict):  # original MedQA layout {"A": text, ...}
            letters_in = [str(k).strip() for k in options]
            texts = [str(v).strip() for v in options.values()]
        else:
            letters_in, texts = [], []
            for item in options:
                m = _OPTION_RE.fullmatch(str(item))
                if not m:
                    raise DatasetRecordError(self.name, where, "options", f"item {item!r} is not 'X. text'", rid)
                letters_in.append(m.group(1))
                texts.append(m.group(2).strip())
        if not 2 <= len(texts) <= 26 or letters_in != list(letters_for(len(texts))):
            raise DatasetRecordError(self.name, where, "options", f"letters {letters_in} are not A.. in order", rid)
        question = self.field(raw, "question", where, rid).strip()
        # The LatentMAS subset appends the option block (twice) to the question; show the stem once, options apart.
        raw_lines = [str(o) for o in options] if isinstance(options, list) else \
            [f"{k}. {v}" for k, v in options.items()]
        blocks = {"\n".join(raw_lines), "\n".join(ln.rstrip() for ln in raw_lines),
                  "\n".join(f"{letter}. {text}" for letter, text in zip(letters_in, texts))}
        stripped = True
        while stripped:
            stripped = False
            for block in blocks:
                if question.endswith(block) and question != block:
                    question = question[: -len(block)].rstrip()
                    stripped = True
        answer = self.field(raw, "answer", where, rid, kind=(str,))
        hits = [letters_in[i] for i, t in enumerate(texts) if t == answer.strip()]
        if not hits:
            hits = [letters_in[i] for i, t in enumerate(texts) if _norm(t) == _norm(answer)]
        if len(hits) != 1:
            what = "matches none of the options" if not hits else f"matches several options {hits}"
            raise DatasetRecordError(self.name, where, "answer", f"{answer!r} {what}", rid)
        extras: dict[str, Any] = {}
        if "idx" in raw:
            extras["source_idx"] = raw["idx"]  # not unique in the subset (two runs 0..99 and 0..199)
        return self.record(rid, question, texts, hits[0], extras)


# ----------------------------------------------------------------------------------------------------------- GPQA


def gpqa_order(sample_id: str, n: int = 4) -> list[int]:
    """Deterministic option order for one GPQA record: ``choices[k] = options[order[k]]``, option 0 = correct.

    The order sorts option indices by ``sha256(f"{sample_id}#{i}")``: stable across runs, machines and Python
    versions (no ``random``/``hash()`` involved), different per record, and uniform over the 24 orders.
    """
    return sorted(range(n), key=lambda i: hashlib.sha256(f"{sample_id}#{i}".encode("utf-8")).hexdigest())


class GPQADiamond(ChoiceTask):
    name = "gpqa_diamond"
    max_choices = 4
    hub = HubSource("Idavidrein/gpqa", "gpqa_diamond", "train", gated=True,
                    note="gated: accept the terms on the Hub and set HF_TOKEN")
    vendored = None
    source_note = ("not vendored: GPQA's authors ask that its questions not be re-posted publicly, so the repository "
                   "carries no copy")

    def no_vendored_message(self) -> str:
        return (
            "gpqa_diamond: there is no vendored copy (GPQA's authors ask that its questions not be re-posted). "
            "Supply it either as a file, --source PATH/gpqa_diamond.csv (the CSV from the official GPQA release, "
            "columns 'Question', 'Correct Answer', 'Incorrect Answer 1'..'3', optionally 'Record ID'), or as "
            "--source hub (needs `pip install datasets`, a Hugging Face account that accepted the Idavidrein/gpqa "
            "terms, and HF_TOKEN)."
        )

    def _raw_rows(self, source):  # type: ignore[override]
        if source is None:
            raise DatasetSourceError(self.no_vendored_message())
        return super()._raw_rows(source)

    def user_prompt(self, record: dict[str, Any], style: str = "ours") -> str:
        if record["extras"].get("layout") == "embedded":  # options inside the question, in the source's order
            self.check_style(style)
            return record["question"]
        return super().user_prompt(record, style)

    def normalise(self, raw: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        if "Question" not in raw and "question" in raw:
            return self._normalise_embedded(raw, position, where)
        record_id = str(raw.get("Record ID") or "").strip()
        rid = f"gpqa_diamond/{record_id}" if record_id else f"gpqa_diamond/{position:04d}"
        question = self.field(raw, "Question", where, rid).strip()
        options = [self.field(raw, "Correct Answer", where, rid).strip()]
        options += [self.field(raw, f"Incorrect Answer {i}", where, rid).strip() for i in (1, 2, 3)]
        order = gpqa_order(rid, len(options))
        choices = [options[i] for i in order]
        gold = letters_for(len(choices))[order.index(0)]
        extras = {"order": order}
        if record_id:
            extras["record_id"] = record_id
        return self.record(rid, question, choices, gold, extras)

    def _normalise_embedded(self, raw: dict[str, Any], position: int, where: str) -> dict[str, Any]:
        """A row whose ``question`` already holds the lettered options and whose ``answer`` is the letter: the layout
        of ``fingertap/GPQA-Diamond``, which the original LatentMAS read. The question is shown as it is, so the
        options keep the source's order (and letters); ``choices`` are parsed from it for scoring."""
        rid = f"gpqa_diamond/{position:04d}"
        question = self.field(raw, "question", where, rid).strip()
        answer = self.field(raw, "answer", where, rid).strip().strip("()").strip().upper()
        found = dict(_EMBEDDED_OPTION_RE.findall(question))
        letters = letters_for(4)
        if sorted(found) != list(letters):
            raise DatasetRecordError(self.name, where, "question", f"does not hold options A-D on their own lines "
                                     f"(found {sorted(found)})", rid)
        if answer not in letters:
            raise DatasetRecordError(self.name, where, "answer", f"{answer!r} is not a letter A-D", rid)
        return self.record(rid, question, [found[x].strip() for x in letters], answer, {"layout": "embedded"})


_EMBEDDED_OPTION_RE = re.compile(r"^\s*\(?([A-D])[).:]\s+(.+?)\s*$", re.MULTILINE)
