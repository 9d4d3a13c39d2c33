"""`latentmas score`: hand-written records through the real scorer; resumable code scoring; the real sandbox."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import latentmas
from latentmas.records import read_records
from latentmas.eval.scoring import SCORE_KEYS, ScoringError, cli_main, partial_path, score_records
from latentmas.eval.tasks import get_task
from latentmas.eval.tasks.fetch import cli_main as fetch_main


def _rec(task: str, sid: str, text: str | None, gold: str | None, status: str = "ok", error: str | None = None,
         **extra) -> dict:
    return {"schema": 1, "cell": "test", "task": task, "sample_id": sid, "method": "baseline", "seed": 0,
            "status": status, "error": error, "final_text": text, "gold": gold, **extra}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gsm8k_parquet(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "gsm8k.parquet"
    fetch_main(["--task", "gsm8k", "--limit", "10", "--out", str(out)])
    return out


def _gsm8k_rows() -> list[dict]:
    return [
        _rec("gsm8k", "gsm8k/0000", r"She sells 9 eggs at $2, so \boxed{18}.", "18"),
        _rec("gsm8k", "gsm8k/0001", "It takes 2 + 2 = 4 bolts. The answer is 4.", "3"),
        _rec("gsm8k", "gsm8k/0002", None, "70000", status="failed", error="non-finite latent at agent critic step 3"),
        _rec("gsm8k", "gsm8k/0003", "I am not able to solve this.", "540"),
    ]


def test_score_cli_four_outcomes(tmp_path, gsm8k_parquet):
    inp = _write(tmp_path / "in.jsonl", _gsm8k_rows())
    out = tmp_path / "score" / "out.jsonl"
    assert cli_main([str(inp), "--data", str(gsm8k_parquet), "--out", str(out)]) == 0
    got = read_records(out)
    assert [(g["prediction"], g["correct"], g["reason"]) for g in got] == [
        ("18", True, "correct"),
        ("4", False, "wrong"),
        (None, False, "inference_failed: non-finite latent at agent critic step 3"),
        (None, False, "no_answer"),
    ]
    for src, g in zip(_gsm8k_rows(), got):  # the inference record is kept whole
        assert {k: v for k, v in g.items() if k not in SCORE_KEYS} == src
        assert g["sandbox"] is None  # no code ran
        assert g["extraction"] == "ours"
    assert not [p for p in out.parent.iterdir() if p.name != "out.jsonl"]  # no temp files left


def test_score_cli_without_data_uses_vendored_and_task_override(tmp_path):
    inp = _write(tmp_path / "in.jsonl", [{k: v for k, v in r.items() if k != "task"} for r in _gsm8k_rows()])
    out = tmp_path / "out.jsonl"
    assert cli_main([str(inp), "--task", "gsm8k", "--out", str(out)]) == 0
    assert [g["reason"] for g in read_records(out)][:2] == ["correct", "wrong"]
    out2 = tmp_path / "out2.jsonl"
    assert cli_main([str(inp), "--out", str(out2)]) == 0  # task from the sample-id prefix
    assert read_records(out2) == read_records(out)


def test_unknown_sample_id_is_named(tmp_path, gsm8k_parquet, capsys):
    rows = _gsm8k_rows() + [_rec("gsm8k", "gsm8k/0999", r"\boxed{1}", None)]
    inp = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert cli_main([str(inp), "--data", str(gsm8k_parquet), "--out", str(out)]) == 2
    assert "'gsm8k/0999' is not in the gsm8k dataset (10 items)" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ScoringError, match=r"'gsm8k/0999' is not in the gsm8k dataset"):
        score_records(rows, "gsm8k", {d["id"]: d for d in get_task("gsm8k").load()[:10]})


def test_changed_gold_and_wrong_task_are_errors(tmp_path, gsm8k_parquet, capsys):
    task = get_task("gsm8k")
    data = {d["id"]: d for d in task.load()[:5]}
    with pytest.raises(ScoringError, match=r"gsm8k/0000.*gold '17'.*'18'"):
        score_records([_rec("gsm8k", "gsm8k/0000", "18", "17")], task, data)
    with pytest.raises(ScoringError, match="task 'aime2024'"):
        score_records([_rec("aime2024", "gsm8k/0000", "18", "18")], task, data)
    with pytest.raises(ScoringError, match="status 'weird'"):
        score_records([_rec("gsm8k", "gsm8k/0000", "18", "18", status="weird")], task, data)
    inp = _write(tmp_path / "in.jsonl", _gsm8k_rows())
    assert cli_main([str(inp), "--task", "medqa", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--task medqa but the records are for ['gsm8k']" in capsys.readouterr().err
    assert cli_main([str(tmp_path / "missing.jsonl"), "--task", "gsm8k", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_choice_scoring_with_parquet(tmp_path):
    data = tmp_path / "medqa.parquet"
    fetch_main(["--task", "medqa", "--limit", "3", "--out", str(data)])
    rows = [
        _rec("medqa", "medqa/0000", r"Ulcerative colitis raises this risk: \boxed{C}", "C"),
        _rec("medqa", "medqa/0001", "Answer: A", None),
        _rec("medqa", "medqa/0002", r"\boxed{F}", None),  # not an option
    ]
    out = tmp_path / "out.jsonl"
    cli_main([_write(tmp_path / "in.jsonl", rows).as_posix(), "--data", str(data), "--out", str(out)])
    got = read_records(out)
    gold1 = get_task("medqa").load()[1]["gold"]
    assert got[0]["reason"] == "correct" and got[0]["prediction"] == "C"
    assert got[1]["prediction"] == "A" and got[1]["correct"] == (gold1 == "A")
    assert got[2]["reason"] == "no_answer"


def test_empty_input_writes_empty_output(tmp_path):
    inp = _write(tmp_path / "in.jsonl", [])
    out = tmp_path / "out.jsonl"
    assert cli_main([str(inp), "--task", "aime2025", "--out", str(out)]) == 0
    assert out.read_text() == ""


# ------------------------------------------------------------------------------------ resumable code scoring


class _FakeVerdict:
    def __init__(self, passed: bool, status: str):
        self.passed, self.status, self.detail = passed, status, ""


@pytest.fixture
def fake_sandbox(monkeypatch):
    """Replace latentmas.eval.sandbox with a recorder: passes iff the program contains 'return True'."""
    calls: list[str] = []
    state = {"die_after": None}

    def check_solution(solution, problem, dataset):
        if state["die_after"] is not None and len(calls) >= state["die_after"]:
            raise KeyboardInterrupt("simulated kill")
        calls.append(problem["task_id"])
        assert dataset == "humaneval" and isinstance(problem["base_input"], list)
        ok = "return True" in solution
        return _FakeVerdict(ok, "pass" if ok else "failed_tests")

    mod = types.ModuleType("latentmas.eval.sandbox")
    mod.check_solution = check_solution
    mod.isolation_mode = lambda limits=None: "fake-mode"
    monkeypatch.setitem(sys.modules, "latentmas.eval.sandbox", mod)
    import latentmas.eval

    monkeypatch.setattr(latentmas.eval, "sandbox", mod, raising=False)  # `from latentmas.eval import sandbox` reads it
    monkeypatch.setattr(latentmas, "sandbox", mod, raising=False)
    return calls, state


def _code_rows() -> list[dict]:
    ids = [f"humanevalplus/HumanEval/{i}" for i in range(5)]
    golds = {r["id"]: r["gold"] for r in get_task("humanevalplus").load()[:5]}
    rows = []
    for i, sid in enumerate(ids):
        body = "return True" if i % 2 == 0 else "return False"
        rows.append(_rec("humanevalplus", sid, f"```python\ndef {golds[sid]}(*a):\n    {body}\n```", golds[sid]))
    rows.append(_rec("humanevalplus", "humanevalplus/HumanEval/5", None, None, status="failed", error="cuda oom"))
    rows.append(_rec("humanevalplus", "humanevalplus/HumanEval/6", "no code, sorry", None))
    return rows


def test_code_scoring_resumes_after_a_kill(tmp_path, fake_sandbox):
    calls, state = fake_sandbox
    inp = _write(tmp_path / "in.jsonl", _code_rows())
    out = tmp_path / "out.jsonl"
    part = partial_path(out)
    assert part.name == "out.partial.jsonl"

    state["die_after"] = 3
    with pytest.raises(KeyboardInterrupt):
        cli_main([str(inp), "--out", str(out)])
    assert not out.exists()
    assert [r["sample_id"] for r in read_records(part)] == [f"humanevalplus/HumanEval/{i}" for i in range(3)]
    with open(part, "a") as fh:  # a kill in the middle of a write leaves a fragment
        fh.write('{"sample_id": "humanevalplus/HumanEval/3", "predic')

    state["die_after"] = None
    calls.clear()
    assert cli_main([str(inp), "--out", str(out)]) == 0
    assert calls == ["HumanEval/3", "HumanEval/4"]  # only the unscored ones ran
    assert not part.exists()
    got = read_records(out)
    assert [g["sample_id"] for g in got] == [r["sample_id"] for r in _code_rows()]
    assert [g["reason"] for g in got] == ["correct", "failed_tests", "correct", "failed_tests", "correct",
                                          "inference_failed: cuda oom", "no_answer"]
    assert got[0]["prediction"] == "from typing import List\ndef has_close_elements(*a):\n    return True\n"
    assert {g["sandbox"] for g in got} == {"fake-mode"}  # every scored code record names the isolation mode


def test_code_partial_is_ignored_when_the_record_changed(tmp_path, fake_sandbox):
    calls, _ = fake_sandbox
    rows = _code_rows()[:2]
    out = tmp_path / "out.jsonl"
    stale = dict(rows[0], final_text="```python\ndef x():\n    return False\n```", prediction="x", correct=False,
                 reason="failed_tests")
    _write(partial_path(out), [stale])
    cli_main([_write(tmp_path / "in.jsonl", rows).as_posix(), "--out", str(out)])
    assert calls == ["HumanEval/0", "HumanEval/1"]
    assert read_records(out)[0]["reason"] == "correct"


# ------------------------------------------------------------------------------------ the real sandbox
# These use latentmas/eval/sandbox/ (check_solution(solution, problem, dataset) -> CodeVerdict); each check runs the
# evalplus base+plus tests in a subprocess, so only a handful of problems are used.


def _by_id(name: str) -> dict[str, dict]:
    return {r["id"]: r for r in get_task(name).load()}


@pytest.mark.parametrize("sid", ["humanevalplus/HumanEval/0", "humanevalplus/HumanEval/2"])
def test_real_sandbox_humaneval_canonical_passes(sid):
    pytest.importorskip("evalplus")
    import latentmas.eval.sandbox  # noqa: F401  (fails loudly until sandbox.py lands)

    task, rec = get_task("humanevalplus"), _by_id("humanevalplus")[sid]
    reply = f"```python\n{rec['extras']['prompt']}{rec['extras']['canonical_solution']}\n```"
    res = task.score(reply, rec)
    assert (res.correct, res.reason) == (True, "correct")
    body_only = f"```python\n{rec['extras']['canonical_solution']}\n```"  # prompt gets prepended
    assert task.score(body_only, rec).correct


def test_real_sandbox_humaneval_wrong_fails():
    import latentmas.eval.sandbox  # noqa: F401

    task, rec = get_task("humanevalplus"), _by_id("humanevalplus")["humanevalplus/HumanEval/2"]
    reply = "```python\ndef truncate_number(number: float) -> float:\n    return number\n```"
    res = task.score(reply, rec)
    assert res.correct is False and res.reason == "failed_tests"


def test_real_sandbox_mbpp_canonical_passes_and_wrong_fails():
    import latentmas.eval.sandbox  # noqa: F401

    task, rec = get_task("mbppplus"), _by_id("mbppplus")["mbppplus/Mbpp/2"]  # tuple inputs: needs deserialisation
    res = task.score(f"```python\n{rec['extras']['canonical_solution']}\n```", rec)
    assert (res.correct, res.reason) == (True, "correct")
    wrong = "```python\ndef similar_elements(a, b):\n    return tuple(a)\n```"
    res = task.score(wrong, rec)
    assert res.correct is False and res.reason == "failed_tests"


def test_real_sandbox_mode_is_in_the_scored_record():
    """The scored record names the isolation the program ran under (a scorer that dropped or guessed the field, or
    a sandbox that fell back silently, would not match the verdict's own record)."""
    from latentmas.eval import sandbox

    rec = _by_id("humanevalplus")["humanevalplus/HumanEval/0"]
    code = rec["extras"]["prompt"] + rec["extras"]["canonical_solution"]
    row = _rec("humanevalplus", rec["id"], f"```python\n{code}\n```", rec["gold"])
    (scored,) = score_records([row], "humanevalplus", {rec["id"]: rec})
    verdict = sandbox.check_solution(code, rec["extras"], "humaneval")
    assert scored["correct"] and scored["sandbox"] == verdict.sandbox == sandbox.isolation_mode()
    assert scored["sandbox"] in sandbox.MODES


def test_evalplus_problem_is_the_release_form_copy():
    from latentmas.eval.tasks import evalplus_problem

    rec = _by_id("mbppplus")["mbppplus/Mbpp/2"]
    prob = evalplus_problem(rec, "mbpp")
    assert prob == rec["extras"] and prob is not rec["extras"]
    assert isinstance(prob["base_input"][0][0], list)  # still JSON lists: the sandbox deserialises (once)
    with pytest.raises(ValueError, match="humaneval"):
        evalplus_problem(rec, "apps")
