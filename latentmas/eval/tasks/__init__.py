"""The nine benchmarks as data: where each comes from, what a record looks like, how answers are read and scored.

>>> from latentmas.eval.tasks import get_task
>>> task = get_task("gsm8k")
>>> records = task.load()                 # vendored copy under data/ (sha256-checked)
>>> task.user_prompt(records[0])          # what the agents are asked
>>> task.answer_instruction               # what the final agent is told about the answer format
>>> task.score("... so \\boxed{18}", records[0])
ScoreResult(prediction='18', correct=True, reason='correct')

See docs/TASKS.md for the table of sources, id schemes and extraction rules.
"""
from __future__ import annotations

from latentmas.contracts import TASK_NAMES
from latentmas.eval.tasks.base import (
    DatasetRecordError,
    DatasetSourceError,
    HubSource,
    ScoreResult,
    Task,
    UnknownTaskError,
    VendoredFile,
    repo_data_dir,
)
from latentmas.eval.tasks.choice import ARCChallenge, ARCEasy, GPQADiamond, MedQA, gpqa_order
from latentmas.eval.tasks.coding import HumanEvalPlus, MbppPlus, evalplus_problem
from latentmas.eval.tasks.numeric import AIME2024, AIME2025, GSM8K

_TASKS: dict[str, Task] = {
    t.name: t
    for t in (GSM8K(), AIME2024(), AIME2025(), GPQADiamond(), MedQA(), ARCEasy(), ARCChallenge(), MbppPlus(),
              HumanEvalPlus())
}
if set(_TASKS) != set(TASK_NAMES):  # the names live in latentmas.contracts; a task class must exist for each
    raise ImportError(f"task classes {sorted(_TASKS)} do not match latentmas.contracts.TASK_NAMES {TASK_NAMES}")


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`UnknownTaskError` (naming it and the known ones) otherwise."""
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(name, TASK_NAMES) from None


__all__ = [
    "TASK_NAMES",
    "get_task",
    "Task",
    "ScoreResult",
    "HubSource",
    "VendoredFile",
    "UnknownTaskError",
    "DatasetRecordError",
    "DatasetSourceError",
    "repo_data_dir",
    "gpqa_order",
    "evalplus_problem",
]
