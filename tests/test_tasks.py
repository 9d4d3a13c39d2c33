"""Tasks on the real vendored data: ids, golds, label/answer mapping, errors, prompts, the dataset artifact."""
from __future__ import annotations

import builtins
import csv
import gzip
import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from latentmas.eval.tasks import (
    TASK_NAMES,
    DatasetRecordError,
    DatasetSourceError,
    UnknownTaskError,
    get_task,
    gpqa_order,
    repo_data_dir,
)
from latentmas.eval.tasks.fetch import DatasetArtifactError, cli_main as fetch_main, read_dataset

DATA = repo_data_dir()


def _raw_jsonl(rel: str) -> list[dict]:
    path = DATA / rel
    opener = gzip.open if rel.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ------------------------------------------------------------------------------------------------------ registry


def test_task_names_and_kinds():
    assert set(TASK_NAMES) == {"gsm8k", "aime2024", "aime2025", "gpqa_diamond", "medqa", "arc_easy", "arc_challenge",
                               "mbppplus", "humanevalplus"}
    kinds = {n: get_task(n).kind for n in TASK_NAMES}
    assert kinds == {"gsm8k": "numeric", "aime2024": "numeric", "aime2025": "numeric", "gpqa_diamond": "choice",
                     "medqa": "choice", "arc_easy": "choice", "arc_challenge": "choice", "mbppplus": "code",
                     "humanevalplus": "code"}
    for n in TASK_NAMES:
        t = get_task(n)
        assert t.name == n
        assert t.answer_instruction.strip()


def test_unknown_task_names_it_and_lists_known():
    with pytest.raises(UnknownTaskError) as ei:
        get_task("gsm9k")
    msg = str(ei.value)
    assert "'gsm9k'" in msg
    for n in TASK_NAMES:
        assert n in msg
    assert not isinstance(ei.value, KeyError)


def test_hub_sources_declared():
    hubs = {n: get_task(n).hub for n in TASK_NAMES}
    assert (hubs["gsm8k"].dataset_id, hubs["gsm8k"].config, hubs["gsm8k"].split) == ("openai/gsm8k", "main", "test")
    assert hubs["gpqa_diamond"].dataset_id == "Idavidrein/gpqa" and hubs["gpqa_diamond"].gated
    assert hubs["arc_challenge"].config == "ARC-Challenge" and hubs["arc_easy"].config == "ARC-Easy"
    assert hubs["humanevalplus"].dataset_id == "evalplus/humanevalplus"
    assert hubs["medqa"] is None  # vendored LatentMAS subset only
    for n, h in hubs.items():
        if h is not None:
            assert hasattr(h, "revision")


# ------------------------------------------------------------------------------------------------------ real data


def test_gsm8k_all_golds_parse_and_match_raw():
    recs = get_task("gsm8k").load()
    raw = _raw_jsonl("gsm8k/test.jsonl")
    assert len(recs) == len(raw) == 1319
    for i, (rec, row) in enumerate(zip(recs, raw)):
        assert rec["id"] == f"gsm8k/{i:04d}"
        final = row["answer"].split("####")[-1].strip().replace(",", "")
        assert re.fullmatch(r"-?\d+", final), final
        assert rec["gold"] == str(int(final))
        assert rec["choices"] is None
    golds = {r["id"]: r["gold"] for r in recs}
    assert golds["gsm8k/0000"] == "18"
    assert any(g.startswith("-") for g in golds.values())  # negatives survive (-10, -3)
    assert "1450000" in golds.values()  # "1,450,000" with commas removed


def test_aime_golds_are_integers():
    a24, a25 = get_task("aime2024").load(), get_task("aime2025").load()
    assert len(a24) == 30 and len(a25) == 30
    assert [r["id"] for r in a24] == [f"aime2024/{i}" for i in range(60, 90)]
    assert [r["id"] for r in a25] == [f"aime2025/{i:04d}" for i in range(30)]
    for rec, row in zip(a24 + a25, _raw_jsonl("aime/aime2024/test.jsonl") + _raw_jsonl("aime/aime2025/test.jsonl")):
        assert 0 <= int(rec["gold"]) <= 999
        assert rec["gold"] == str(int(row["answer"]))
        assert rec["question"] == row["problem"].strip()
    assert a24[0]["gold"] == "204" and a25[0]["gold"] == "70"


@pytest.mark.parametrize("name, n, n_numeric", [("arc_easy", 2376, 97), ("arc_challenge", 1172, 22)])
def test_arc_labels_map_to_letters_in_order(name, n, n_numeric):
    recs = get_task(name).load()
    raw = _raw_jsonl(f"arc/{'ARC-Easy' if name == 'arc_easy' else 'ARC-Challenge'}-test.jsonl")
    assert len(recs) == len(raw) == n
    numeric = 0
    for rec, row in zip(recs, raw):
        assert rec["id"] == f"{name}/{row['id']}"
        assert rec["choices"] == row["choices"]["text"]  # order kept
        labels = row["choices"]["label"]
        idx = labels.index(row["answerKey"])
        assert rec["gold"] == "ABCDE"[idx]
        if labels[0] == "1":
            numeric += 1
            assert rec["extras"]["labels"] == [str(i) for i in range(1, len(labels) + 1)]
    assert numeric == n_numeric
    assert len({r["id"] for r in recs}) == n


def test_arc_numeric_label_example():
    recs = {r["id"]: r for r in get_task("arc_easy").load()}
    raw = [r for r in _raw_jsonl("arc/ARC-Easy-test.jsonl") if r["choices"]["label"][0] == "1"][0]
    rec = recs[f"arc_easy/{raw['id']}"]
    assert rec["gold"] == "ABCD"[int(raw["answerKey"]) - 1]
    assert get_task("arc_easy").user_prompt(rec).endswith(f"D. {raw['choices']['text'][3]}")


def test_arc_challenge_known_id():
    rec = {r["id"]: r for r in get_task("arc_challenge").load()}["arc_challenge/Mercury_7175875"]
    assert rec["gold"] == "C" and len(rec["choices"]) == 4


def test_medqa_all_300_answers_map():
    recs = get_task("medqa").load()
    raw = json.loads((DATA / "medqa/medqa.json").read_text(encoding="utf-8"))
    assert len(recs) == len(raw) == 300
    assert len({r["id"] for r in recs}) == 300  # the subset's own idx repeats, so ids are positions
    for i, (rec, row) in enumerate(zip(recs, raw)):
        assert rec["id"] == f"medqa/{i:04d}"
        assert len(rec["choices"]) == 4
        assert rec["choices"][ord(rec["gold"]) - 65].strip() == row["answer"].strip()
        assert row["options"][ord(rec["gold"]) - 65].startswith(rec["gold"] + ". ")
        # the stem is shown once; options only in the lettered block
        assert "\nA. " not in rec["question"]
        assert row["query"].startswith(rec["question"])
    assert recs[0]["gold"] == "C"
    assert Counter(r["gold"] for r in recs).keys() == {"A", "B", "C", "D"}


@pytest.mark.parametrize("name, n, first, last", [("humanevalplus", 164, "HumanEval/0", "HumanEval/163"),
                                                  ("mbppplus", 378, "Mbpp/2", "Mbpp/809")])
def test_code_tasks_keep_evalplus_problem(name, n, first, last):
    recs = get_task(name).load()
    assert len(recs) == n
    assert recs[0]["id"] == f"{name}/{first}" and recs[-1]["id"] == f"{name}/{last}"
    for rec in recs:
        ex = rec["extras"]
        for key in ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol",
                    "contract"):
            assert key in ex
        assert rec["gold"] == ex["entry_point"] and rec["question"] == ex["prompt"] and rec["choices"] is None
        if name == "mbppplus":
            assert "assertion" in ex


def test_vendored_sha256_is_checked(tmp_path, monkeypatch):
    shutil.copytree(DATA / "aime", tmp_path / "aime")
    monkeypatch.setenv("LATENTMAS_DATA_DIR", str(tmp_path))
    assert len(get_task("aime2025").load()) == 30  # env var honoured
    p = tmp_path / "aime/aime2025/test.jsonl"
    p.write_text(p.read_text().replace('"70"', '"71"'))
    with pytest.raises(DatasetSourceError, match="sha256"):
        get_task("aime2025").load()
    monkeypatch.setenv("LATENTMAS_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetSourceError, match="LATENTMAS_DATA_DIR"):
        get_task("gsm8k").load()


# ------------------------------------------------------------------------------------------------------ errors


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_malformed_gsm8k_names_line_id_and_field(tmp_path):
    p = _write_jsonl(tmp_path / "g.jsonl", [{"question": "q1", "answer": "x #### 1"}, {"question": "q2"}])
    with pytest.raises(DatasetRecordError) as ei:
        get_task("gsm8k").load(p)
    e = ei.value
    assert e.field == "answer" and e.record_id == "gsm8k/0001"
    assert "line 2" in str(e) and "'answer'" in str(e) and "gsm8k/0001" in str(e)


def test_gsm8k_answer_without_final_number(tmp_path):
    p = _write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(DatasetRecordError, match=r"line 1.*'answer'.*####"):
        get_task("gsm8k").load(p)


def test_malformed_arc_names_id_and_field(tmp_path):
    good = {"id": "X1", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}
    bad = {"id": "X2", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}
    with pytest.raises(DatasetRecordError) as ei:
        get_task("arc_easy").load(_write_jsonl(tmp_path / "a.jsonl", [good, bad]))
    assert ei.value.field == "answerKey" and "arc_easy/X2" in str(ei.value) and "line 2" in str(ei.value)
    bad2 = dict(good, id="X3", answerKey="C")
    with pytest.raises(DatasetRecordError, match=r"arc_easy/X3.*'answerKey'.*'C'"):
        get_task("arc_easy").load(_write_jsonl(tmp_path / "b.jsonl", [bad2]))
    noid = {k: v for k, v in good.items() if k != "id"}
    with pytest.raises(DatasetRecordError, match=r"line 1.*'id' is missing"):
        get_task("arc_easy").load(_write_jsonl(tmp_path / "c.jsonl", [noid]))
    dup = [good, dict(good)]
    with pytest.raises(DatasetRecordError, match="duplicates"):
        get_task("arc_easy").load(_write_jsonl(tmp_path / "d.jsonl", dup))


def test_arc_original_ai2_layout_is_read(tmp_path):
    row = {"id": "Y1", "question": {"stem": "Which?", "choices": [{"text": "x", "label": "1"}, {"text": "y", "label": "2"}]},
           "answerKey": "2"}
    rec = get_task("arc_challenge").load(_write_jsonl(tmp_path / "o.jsonl", [row]))[0]
    assert rec == {"id": "arc_challenge/Y1", "question": "Which?", "choices": ["x", "y"], "gold": "B",
                   "extras": {"labels": ["1", "2"]}}


def test_malformed_medqa_answer_not_in_options(tmp_path):
    rows = [{"question": "q", "options": ["A. x", "B. y"], "answer": "z"}]
    p = tmp_path / "m.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(DatasetRecordError) as ei:
        get_task("medqa").load(p)
    assert ei.value.field == "answer" and "medqa/0000" in str(ei.value) and "none of the options" in str(ei.value)
    p.write_text(json.dumps([{"question": "q", "answer": "x"}]))
    with pytest.raises(DatasetRecordError, match=r"medqa/0000.*'options' is missing"):
        get_task("medqa").load(p)


def test_malformed_code_record(tmp_path):
    row = {k: v for k, v in _raw_jsonl("humanevalplus/HumanEvalPlus.jsonl.gz")[0].items() if k != "entry_point"}
    with pytest.raises(DatasetRecordError) as ei:
        get_task("humanevalplus").load(_write_jsonl(tmp_path / "h.jsonl", [row]))
    assert ei.value.field == "entry_point" and "humanevalplus/HumanEval/0" in str(ei.value)


def test_missing_user_file(tmp_path):
    with pytest.raises(DatasetSourceError, match="does not exist"):
        get_task("gsm8k").load(tmp_path / "nope.jsonl")


def test_hub_without_datasets_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DatasetSourceError, match="datasets"):
        get_task("gsm8k").load("hub")
    with pytest.raises(DatasetSourceError, match="no Hugging Face source"):
        get_task("medqa").load("hub")
    with pytest.raises(DatasetSourceError, match="plus test inputs"):
        get_task("humanevalplus").load("hub")


# ------------------------------------------------------------------------------------------------------ GPQA

GPQA_COLS = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
             "Incorrect Answer 3", "Subdomain"]


def _gpqa_csv(path: Path, n: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(GPQA_COLS)
        for i in range(n):
            w.writerow([f"rec{i:03d}", f" Question {i}?\n", f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c",
                        "Physics"])
    return path


def test_gpqa_needs_a_source():
    with pytest.raises(DatasetSourceError) as ei:
        get_task("gpqa_diamond").load()
    msg = str(ei.value)
    assert "--source" in msg and "Correct Answer" in msg and "hub" in msg


def test_gpqa_csv_is_shuffled_deterministically(tmp_path):
    p = _gpqa_csv(tmp_path / "gpqa_diamond.csv", 40)
    task = get_task("gpqa_diamond")
    a, b = task.load(p), task.load(p)
    assert a == b
    golds = Counter(r["gold"] for r in a)
    assert len(golds) == 4 and max(golds.values()) < 25  # spread over A-D, not always A
    for i, r in enumerate(a):
        assert r["id"] == f"gpqa_diamond/rec{i:03d}"
        assert r["question"] == f"Question {i}?"
        assert r["choices"][ord(r["gold"]) - 65] == f"right {i}"
        assert sorted(r["choices"]) == sorted([f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c"])
        assert r["extras"]["order"] == gpqa_order(r["id"])
    # the order depends only on the record id, not on file position
    order = [hashlib.sha256(f"gpqa_diamond/rec000#{i}".encode()).hexdigest() for i in range(4)]
    assert gpqa_order("gpqa_diamond/rec000") == sorted(range(4), key=lambda i: order[i])


def test_gpqa_malformed_row(tmp_path):
    p = tmp_path / "g.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2"])
        w.writerow(["recA", "q?", "r", "w1", "w2"])
    with pytest.raises(DatasetRecordError, match=r"row 2 \(record id 'gpqa_diamond/recA'\).*'Incorrect Answer 3'"):
        get_task("gpqa_diamond").load(p)


# ------------------------------------------------------------------------------------------------------ prompts


def test_user_prompts():
    g = get_task("gsm8k").load()[0]
    assert get_task("gsm8k").user_prompt(g) == g["question"]
    m = get_task("medqa").load()[0]
    prompt = get_task("medqa").user_prompt(m)
    assert prompt.count("\nA. ") == 1 and "\nD. Pancreatic cancer" in prompt
    h = get_task("humanevalplus").load()[0]
    assert "def has_close_elements(" in get_task("humanevalplus").user_prompt(h)
    mb = get_task("mbppplus").load()[0]
    p = get_task("mbppplus").user_prompt(mb)
    assert "similar_elements" in p and '"""' not in p
    assert "\\boxed" in get_task("gsm8k").answer_instruction and "\\boxed" in get_task("arc_easy").answer_instruction
    assert "```python" in get_task("mbppplus").answer_instruction


def test_task_score_numeric_and_choice():
    t = get_task("gsm8k")
    rec = t.load()[0]
    assert tuple(t.score(r"so she makes \boxed{\$18.00}", rec)) == ("18", True, "correct")
    assert tuple(t.score("she makes 17 dollars", rec)) == ("17", False, "wrong")
    assert tuple(t.score("I cannot tell", rec)) == (None, False, "no_answer")
    c = get_task("arc_challenge")
    rec = {r["id"]: r for r in c.load()}["arc_challenge/Mercury_7175875"]
    assert c.score("The answer is (C).", rec).correct
    assert c.score(r"\boxed{Planetary days will become shorter.}", rec).prediction == "C"
    assert c.score(r"\boxed{E}", rec).reason == "no_answer"  # E is not an option here


def test_humaneval_solution_completion():
    t = get_task("humanevalplus")
    rec = t.load()[0]
    body = "```python\n    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i+1:])\n```"
    sol = t.extract(body, rec)
    assert sol.startswith(rec["extras"]["prompt"]) and "return any(" in sol
    full = "```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    return False\n```"
    sol = t.extract(full, rec)
    assert sol.startswith("from typing import List\n") and sol.count("def has_close_elements") == 1


# ------------------------------------------------------------------------------------------------------ artifact


@pytest.mark.parametrize("name", ["gsm8k", "medqa", "arc_challenge", "humanevalplus", "mbppplus", "aime2024"])
def test_fetch_data_roundtrip(tmp_path, name):
    out = tmp_path / "data" / f"{name}.parquet"
    assert fetch_main(["--task", name, "--out", str(out)]) == 0
    assert read_dataset(out) == get_task(name).load()
    side = out.with_name(out.name + ".sha256").read_text()
    assert side == f"{hashlib.sha256(out.read_bytes()).hexdigest()}  {out.name}\n"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_fetch_data_schema_limit_and_determinism(tmp_path):
    import polars as pl

    a, b = tmp_path / "a" / "arc_easy.parquet", tmp_path / "b" / "arc_easy.parquet"
    fetch_main(["--task", "arc_easy", "--limit", "25", "--out", str(a)])
    fetch_main(["--task", "arc_easy", "--limit", "25", "--out", str(b)])
    assert a.read_bytes() == b.read_bytes()
    df = pl.read_parquet(a)
    assert df.columns == ["id", "question", "choices", "gold", "extras"]
    assert df.schema["choices"] == pl.List(pl.String) and df.schema["extras"] == pl.String
    assert df.height == 25 and df["id"][0] == get_task("arc_easy").load()[0]["id"]
    g = tmp_path / "gsm8k.parquet"
    fetch_main(["--task", "gsm8k", "--limit", "3", "--out", str(g)])
    assert pl.read_parquet(g)["choices"].null_count() == 3


def test_fetch_data_error_is_a_message_not_a_traceback(tmp_path, capsys):
    assert fetch_main(["--task", "gpqa_diamond", "--out", str(tmp_path / "g.parquet")]) == 2
    assert "no vendored copy" in capsys.readouterr().err
    assert not (tmp_path / "g.parquet").exists()


def test_fetch_gpqa_from_user_csv(tmp_path):
    p = _gpqa_csv(tmp_path / "gpqa.csv", 5)
    out = tmp_path / "gpqa_diamond.parquet"
    fetch_main(["--task", "gpqa_diamond", "--source", str(p), "--out", str(out)])
    assert read_dataset(out) == get_task("gpqa_diamond").load(p)


def test_read_dataset_checks_sidecar(tmp_path):
    out = tmp_path / "medqa.parquet"
    fetch_main(["--task", "medqa", "--limit", "2", "--out", str(out)])
    out.with_name(out.name + ".sha256").write_text("0" * 64 + "  medqa.parquet\n")
    with pytest.raises(DatasetArtifactError, match="sidecar"):
        read_dataset(out)
    assert len(read_dataset(out, verify=False)) == 2
    with pytest.raises(DatasetArtifactError, match="does not exist"):
        read_dataset(tmp_path / "missing.parquet")
