"""``extraction: strict``: answer extraction that scores the way the original LatentMAS code does, per task.

Why: our extractors (:mod:`latentmas.eval.extract`) are deliberately more lenient than the original's (phrase rules
before the last-number fallback, exact fractions, letters in many forms, any fenced block, the HumanEval+ prompt put in
front of a body-only reply). Comparing our numbers with the paper's needs the original's rules too. These functions
restate those rules in our own code, from reading the original (Gen-Verse/LatentMAS at 1430ad6: ``utils.py``
``extract_gsm8k_answer`` / ``extract_gold`` / ``normalize_answer`` / ``extract_markdown_python_block`` and the scoring
branches of ``methods/*.py``); docs/TASKS.md lists every rule with its origin.

* numbers and letters (every non-code task): the content of the last ``\\boxed{...}`` up to the first ``}`` (no
  nesting); inside it the first signed decimal number, else the whole content; with no box, the last signed decimal
  number of the reply; the result stripped and lower-cased. GSM8K and the choice tasks then compare that string with
  the gold string; AIME compares ``int()`` of both (a non-integer prediction is wrong).
* code: the last block opened by three backticks and ``python`` (any case) and closed by three backticks; the rest of
  the reply, unfenced code and other fences are ignored, and nothing is put in front of it.
"""
from __future__ import annotations

import re
from typing import Any

_BOX = re.compile(r"\\boxed\{([^}]*)\}")  # no nesting: the content stops at the first closing brace
_SIGNED_DECIMAL = re.compile(r"[-+]?\d+(?:\.\d+)?")
_GOLD_AFTER_HASHES = re.compile(r"####\s*([-+]?\d+(?:\.\d+)?)")
_PYTHON_FENCE = re.compile(r"```python(.*?)```", re.DOTALL | re.IGNORECASE)


def number_answer(text: str | None) -> str | None:
    """The original's extracted answer string (lower-cased), or ``None`` (also for an empty string)."""
    if not text:
        return None
    boxes = _BOX.findall(text)
    if boxes:
        content = boxes[-1]
        number = _SIGNED_DECIMAL.search(content)
        found = number.group(0) if number else content
    else:
        numbers = _SIGNED_DECIMAL.findall(text)
        if not numbers:
            return None
        found = numbers[-1]
    found = found.strip().lower()
    return found or None


def gsm8k_gold(record: dict[str, Any]) -> str:
    """The original's GSM8K gold: the first signed decimal after ``####`` in the raw answer (so ``2,125`` -> ``2``).

    Uses the raw final answer kept in ``extras["final"]``; a dataset artifact made before that key existed falls back
    to our canonical gold.
    """
    final = record.get("extras", {}).get("final")
    if final is None:
        return record["gold"]
    m = _GOLD_AFTER_HASHES.search(f"#### {final}")
    return m.group(1).strip().lower() if m else ""


def choice_gold(record: dict[str, Any]) -> str:
    """The original's gold for the choice tasks: the option letter, lower-cased."""
    return record["gold"].lower()


def python_block(text: str | None) -> str | None:
    """The last closed ```python block, stripped; ``None`` when there is none (the original: "No python code block")."""
    if not text:
        return None
    blocks = _PYTHON_FENCE.findall(text)
    return blocks[-1].strip() if blocks else None
