"""The Snakemake workflow, driven through its CLI in a scratch copy (the repository's results/ are never touched).

* dry runs plan the expected jobs per rule (demo config, a grid config, the paper grid with GPU resources);
* config errors are caught before any job and name the key path;
* the file names the workflow declares match what `latentmas aggregate` / `latentmas figures` write;
* `snakemake --lint` is clean;
* end to end on two tiny random-weight models: every table, figure and the HTML report; then reruns plan nothing,
  a changed latent_steps of one model plans only that model's latent_mas jobs, a new seed only its own jobs.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = ("fetch_dataset", "fetch_model", "align", "infer", "score", "merge_cell", "aggregate", "figures", "publish",
         "latent_health", "audit_pages", "all")
# jobs that follow from any change of cells: one aggregate, figures, publish, latent_health, audit_pages and `all`
TAIL = {"aggregate": 1, "figures": 1, "publish": 1, "latent_health": 1, "audit_pages": 1, "all": 1}


def _copy_workflow(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", dst / "Snakefile")
    shutil.copytree(REPO / "workflow", dst / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "config", dst / "config")
    return dst


@pytest.fixture
def wf(tmp_path) -> Path:
    return _copy_workflow(tmp_path / "wf")


@pytest.fixture(scope="session")
def no_scontrol(tmp_path_factory) -> Path:
    """A PATH entry whose `scontrol` fails at once. Snakemake's CLI loads the SLURM executor plugin, which runs
    `scontrol show config` (10 s timeout) while building its help text: on a machine with SLURM's client installed
    but no controller reachable that costs 10 s per invocation. These tests never use SLURM."""
    d = tmp_path_factory.mktemp("bin")
    (d / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (d / "scontrol").chmod(0o755)
    return d


_SHIM: list[Path] = []


@pytest.fixture(autouse=True)
def _shim(no_scontrol):
    _SHIM[:] = [no_scontrol]


def smk(wd: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("SNAKEMAKE_PROFILE", None)
    env["PATH"] = os.pathsep.join([*map(str, _SHIM), env.get("PATH", "")])
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile", "workflow/profiles/default",
                           *args], cwd=wd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-6000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def job_stats(text: str) -> dict[str, int]:
    """The first 'Job stats' table of a Snakemake run/dry run, without the total ({} when nothing is planned)."""
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:", 1)[1]
    stats = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        stats[m.group(1)] = int(m.group(2))
    stats.pop("total", None)
    return stats


def dry(wd: Path, *args: str) -> tuple[dict[str, int], str]:
    p = smk(wd, "-n", *args)
    text = p.stdout + p.stderr
    return job_stats(text), text


def write_config(wd: Path, name: str, base: str, edit) -> str:
    cfg = yaml.safe_load((wd / base).read_text())
    edit(cfg)
    (wd / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


# --------------------------------------------------------------------------------------------------------- dry runs
def test_demo_config_plans_one_job_per_cell(wf):
    stats, text = dry(wf)
    # 1 model x 3 tasks x (baseline + text_mas + latent_mas), 1 seed, 1 shard each
    assert stats == {"fetch_dataset": 3, "fetch_model": 1, "align": 1, "infer": 9, "score": 9, "merge_cell": 9,
                     **TAIL}
    assert "results/infer/qwen2.5-coder-0.5b/gsm8k/latent_mas-sequential-k10-realign/seed0/shard-0-of-1.jsonl" in text


def grid_arithmetic(cfg: dict) -> dict[str, int]:
    """Expected job counts of a config, from the documented expansion rules (docs/WORKFLOW.md, 'Cells')."""
    cells = set()
    lat0 = cfg.get("latent", {})
    for model, m in cfg["models"].items():
        lat = {"steps": [10], "realign": [True], "memory": ["all"], **lat0, **m.get("latent", {})}
        for task in cfg["tasks"]:
            for seed in cfg.get("seeds", [0]):
                for method in cfg["methods"]:
                    if method == "baseline":
                        cells.add((model, task, "baseline", seed))
                    elif method == "text_mas":
                        cells |= {(model, task, f"text_mas-{a}", seed) for a in cfg.get("archs", ["sequential"])}
                    else:
                        cells |= {(model, task, f"latent_mas-{a}-k{k}-{'realign' if r else 'norealign'}"
                                   + ("" if mem == "all" else f"-mem_{mem}"), seed)
                                  for a in cfg.get("archs", ["sequential"]) for k in lat["steps"]
                                  for r in lat["realign"] for mem in lat["memory"]}
    for c in cfg.get("extra_cells", []):
        assert c["method"] == "latent_mas"
        cells.add((c["model"], c["task"], f"latent_mas-{c.get('arch', 'sequential')}-k{c['latent_steps']}-"
                   f"{'realign' if c.get('realign', True) else 'norealign'}", c.get("seed", 0)))
    shards = sum(cfg["tasks"][t].get("n_shards", 1) for (_, t, _, _) in cells)
    realigned = {m for (m, _, v, _) in cells if v.endswith("-realign")}
    return {"fetch_dataset": len(cfg["tasks"]), "fetch_model": len(cfg["models"]), "align": len(realigned),
            "infer": shards, "score": shards, "merge_cell": len(cells), **TAIL}


def test_grid_config_expansion(wf):
    cfg = yaml.safe_load((wf / "config/tests/grid.yaml").read_text())
    stats, text = dry(wf, "--configfile", "config/tests/grid.yaml")
    expected = grid_arithmetic(cfg)
    assert stats == expected
    # by hand: tiny-llama 11 variants, tiny-qwen2 7, x 2 tasks x 2 seeds, + 1 extra cell = 73 cells;
    # 5 shards per (model, variant, seed) over the two tasks -> 2*(11+7)*5 + 2 (extra cell on gsm8k) = 182
    assert expected["merge_cell"] == 73 and expected["infer"] == 182
    outputs = set(re.findall(r"output: (results/infer/\S+\.jsonl)", text))
    assert "results/infer/tiny-llama/arc_easy/latent_mas-hierarchical-k3-norealign/seed1/shard-2-of-3.jsonl" in outputs
    assert "results/infer/tiny-qwen2/gsm8k/latent_mas-sequential-k7-norealign/seed0/shard-1-of-2.jsonl" in outputs
    assert not any("tiny-qwen2" in o and "-k1-" in o for o in outputs)  # per-model steps override is per model
    assert not any("baseline-" in o or "text_mas-sequential-k" in o for o in outputs)  # no meaningless combinations
    # the per-model resource override reaches that model's infer jobs only
    blocks = text.split("\nrule ")
    mem = {re.search(r"wildcards: model=([\w.-]+)", b).group(1): re.search(r"mem_mb=(\d+)", b).group(1)
           for b in blocks if b.startswith("infer:")}
    assert mem == {"tiny-llama": "3000", "tiny-qwen2": "8000"}


def test_configfile_replaces_the_default_config(wf):
    stats, text = dry(wf, "--configfile", "config/tests/tiny.yaml")
    assert "qwen2.5-coder" not in text and "humanevalplus" not in text
    assert stats["fetch_model"] == 2 and stats["fetch_dataset"] == 2


def test_paper_grid_expands_fully_with_gpu_resources(wf):
    cfg = yaml.safe_load((wf / "config/paper.yaml").read_text())
    stats, text = dry(wf, "--configfile", "config/paper.yaml")
    expected = grid_arithmetic(cfg)
    assert stats == expected
    # 3 models x 9 tasks x 3 seeds x (1 + 2 + 2 archs x 2 steps x 2 realign) = 891 cells + 9 sweep cells;
    # 35 shards per (model, variant, seed) over the nine tasks -> 3*11*3*35 + 9*8 = 3537 infer jobs
    assert expected["merge_cell"] == 900 and expected["infer"] == 3537 and expected["align"] == 3
    blocks = [b for b in text.split("\nrule ") if b.startswith(("infer:", "align:"))]
    assert len(blocks) == expected["infer"] + expected["align"]
    for b in blocks:
        res = re.search(r"resources: (.*)", b).group(1)
        assert "gpu=1" in res and re.search(r"mem_mb=\d+", res) and re.search(r"runtime=\d+", res) \
            and re.search(r"cpus_per_task=\d+", res), b[:400]
    assert "qwen2.5-coder" not in text


# ------------------------------------------------------------------------------------------------------- validation
BASE = {"models": {"m": {"spec": "tiny:llama"}}, "tasks": {"gsm8k": {"n": 2}}, "methods": ["baseline"]}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["tasks"].update(foo={"n": 1}), "config.tasks.foo: unknown name 'foo'"),
    (lambda c: c.update(methods=["baseline", "cot"]), "config.methods[1]: 'cot' is not one of"),
    (lambda c: c.update(latent={"steps": [10, -1]}), "config.latent.steps[1]: must be >= 0, got -1"),
    (lambda c: c["tasks"]["gsm8k"].update(n_shards=0), "config.tasks.gsm8k.n_shards: must be >= 1, got 0"),
    (lambda c: c["tasks"]["gsm8k"].update(n="two"), "config.tasks.gsm8k.n: expected integer or null, got str"),
    (lambda c: c.update(decoding={"max_new_tokens": 8, "greedyy": True}), "config.decoding.greedyy: unknown key"),
    (lambda c: c.update(extra_cells=[{"model": "nope", "task": "gsm8k", "method": "baseline"}]),
     "config.extra_cells[0].model: 'nope' is not declared under models:"),
    (lambda c: c["tasks"]["gsm8k"].update(n_shards=3), "config.tasks.gsm8k.n_shards: 3 shards for n=2 items"),
], ids=["unknown-task", "unknown-method", "negative-latent-steps", "zero-shards", "wrong-type", "unknown-key",
        "undeclared-model", "more-shards-than-items"])
def test_config_errors_name_the_key(wf, edit, message):
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    edit(cfg)
    (wf / "bad.yaml").write_text(yaml.safe_dump(cfg))
    p = smk(wf, "-n", "--configfile", "bad.yaml", check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "invalid workflow config" in out and message in out, out[-3000:]
    assert "Job stats" not in out


def test_lint_is_clean(wf):
    p = smk(wf, "--lint", check=False)
    out = p.stdout + p.stderr
    assert "Congratulations, your workflow is in a good condition!" in out, out[-4000:]


# ------------------------------------------------------------------------------------------- resumable inference
class _Named(list):
    """Enough of Snakemake's Namedlist for the wrapper scripts: a list with attribute and .get access."""

    def __init__(self, items=(), **named):
        super().__init__(list(items) + list(named.values()))
        self.__dict__.update(named)

    def get(self, key, default=None):
        return self.__dict__.get(key, default)


def _run_infer_wrapper(tmp_path, monkeypatch, fake_cli, settings=None):
    import runpy
    import types

    scripts = REPO / "workflow/scripts"
    monkeypatch.syspath_prepend(str(scripts))
    import _common

    monkeypatch.setattr(_common, "latentmas", fake_cli)
    out = tmp_path / "results/infer/m/gsm8k/baseline/seed0/shard-0-of-1.jsonl"
    sm = types.SimpleNamespace(
        params=types.SimpleNamespace(settings=settings or {"task": "gsm8k", "method": "baseline", "seed": 0,
                                                           "n": 2, "shard": "0/1", "batch_size": 1, "greedy": True}),
        input=_Named(model=str(tmp_path / "resources/models/m/.fetched"), data=str(tmp_path / "d.parquet")),
        output=_Named([str(out)]), log=_Named([str(tmp_path / "infer.log")]), threads=1, scriptdir=str(scripts))
    runpy.run_path(str(scripts / "infer.py"), init_globals={"snakemake": sm})
    return out


def test_infer_wrapper_resumes_its_partial_file_and_drops_stale_ones(tmp_path, monkeypatch):
    calls = []

    def fake_cli(args, log, env=None, threads=None):
        calls.append(args)
        partial = Path(args[args.index("--out") + 1])
        with open(partial, "a") as fh:
            fh.write('{"sample_id": "new"}\n')
        if os.environ.get("FAKE_FAIL"):
            raise SystemExit("latentmas run failed")

    # 1. a run that fails: the partial file (not a Snakemake output) survives, the output does not exist
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(SystemExit):
        _run_infer_wrapper(tmp_path, monkeypatch, fake_cli)
    out = tmp_path / "results/infer/m/gsm8k/baseline/seed0/shard-0-of-1.jsonl"
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and partial.read_text().count("new") == 1
    assert calls[-1][:2] == ["run", "--model"] and "--greedy" in calls[-1] and "--arch" not in calls[-1]
    # 2. the retry with the same settings resumes it, then renames it onto the output
    monkeypatch.delenv("FAKE_FAIL")
    _run_infer_wrapper(tmp_path, monkeypatch, fake_cli)
    assert out.read_text().count("new") == 2 and not partial.exists()
    assert not out.with_name(out.name + ".partial.json").exists()
    # 3. a partial file left by other settings is discarded, not resumed
    out.unlink()
    partial.write_text('{"sample_id": "old"}\n')
    out.with_name(out.name + ".partial.json").write_text("{}")
    _run_infer_wrapper(tmp_path, monkeypatch, fake_cli)
    assert out.read_text() == '{"sample_id": "new"}\n'


# ------------------------------------------------------------------------------------------------------- end to end
ENGINE = importlib.util.find_spec("latentmas.pipeline.runner") is not None


@pytest.mark.skipif(not ENGINE, reason="latentmas.pipeline.runner (the inference engine) is not importable yet")
def test_end_to_end_tiny_models_report_and_reruns(tmp_path):
    wd = _copy_workflow(tmp_path / "wf")
    tiny = "config/tests/tiny.yaml"
    smk(wd, "--cores", "2", "--configfile", tiny, timeout=1200)

    for name in ("settings.parquet", "settings.csv", "per_seed.parquet", "per_seed.csv", "table_accuracy.md",
                 "table_tokens.md", "table_speed.md", "summary.json"):
        assert (wd / "reports/tables" / name).stat().st_size > 0, name
        assert (wd / "results/tables" / name).read_bytes() == (wd / "reports/tables" / name).read_bytes()
    for name in ("accuracy", "tokens", "speedup", "latent_steps"):
        for ext in ("png", "svg"):
            assert (wd / f"reports/figures/{name}.{ext}").stat().st_size > 0
    import polars as pl

    settings = pl.read_parquet(wd / "results/tables/settings.parquet")
    assert settings.height == 2 * 2 * 3  # models x tasks x methods, seed pooled
    assert set(settings["n_samples"].to_list()) == {2}
    # sharded cell: 2 shards merged into 2 records, no leftovers of the resumable runner
    merged = (wd / "results/score/tiny-llama/gsm8k/baseline/seed0/all.jsonl").read_text().splitlines()
    assert len(merged) == 2
    assert not list((wd / "results/infer").rglob("*.partial*"))

    # acceptance (issue 12): `latentmas run --config --cell --shard` by hand = the pipeline's infer job, record for
    # record; only the measured timings/memory may differ. Catches: run defaults differing from the config's, or a
    # setting the pipeline passes that --config/--cell does not (or the reverse).
    import json

    cell, shard = "tiny-qwen2/gsm8k/latent_mas-sequential-k2-realign/seed0", "1/2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "latentmas.cli", "run", "--config", tiny, "--cell", cell, "--shard", shard,
                    "--out", "by_hand.jsonl"], cwd=wd, env=env, check=True, capture_output=True, timeout=600)

    def untimed(line: str) -> str:
        rec = json.loads(line)
        for key in ("wall_s", "peak_mem_mb"):
            rec.pop(key)
        for agent in rec["agents"]:
            agent.pop("wall_s")
        return json.dumps(rec, sort_keys=True)

    by_hand = (wd / "by_hand.jsonl").read_text().splitlines()
    piped = (wd / f"results/infer/{cell}/shard-1-of-2.jsonl").read_text().splitlines()
    assert len(by_hand) == len(piped) == 1
    assert [untimed(x) for x in by_hand] == [untimed(x) for x in piped]

    smk(wd, "--configfile", tiny, "--report", "reports/report.html")
    html = (wd / "reports/report.html").read_text()
    assert "accuracy.png" in html and "settings.csv" in html and len(html) > 100_000
    # audit pages: every cell's correct/incorrect page, latent cells side by side, all linked from the report
    index = (wd / "results/audit/index.html").read_text()
    assert index.count("/correct.html") == 12 and index.count("/compare.html") == 4
    assert "Audit pages" in html and "latent_health.csv" in html and "latent_lens.png" in html

    # nothing left to do
    assert dry(wd, "--configfile", tiny)[0] == {}

    # latent_steps of one model: only that model's latent_mas cells (gsm8k 2 shards + arc_easy 1) and the tail
    k3 = write_config(wd, "k3.yaml", tiny, lambda c: c["models"]["tiny-llama"].update(latent={"steps": [3]}))
    stats, text = dry(wd, "--configfile", k3)
    assert stats == {"infer": 3, "score": 3, "merge_cell": 2, **TAIL}
    assert all("tiny-llama" in o and "-k3-" in o for o in re.findall(r"output: (results/infer/\S+)", text))

    # one more seed: only the new seed's cells (2 models x 2 tasks x 3 methods; 3 shards per model x method)
    s2 = write_config(wd, "s2.yaml", tiny, lambda c: c.update(seeds=[0, 1]))
    stats, text = dry(wd, "--configfile", s2)
    assert stats == {"infer": 18, "score": 18, "merge_cell": 12, **TAIL}
    assert all("/seed1/" in o for o in re.findall(r"output: (results/\S+)", text) if o.startswith("results/infer"))

    # a task's max_new_tokens: only that task's cells
    t = write_config(wd, "arc.yaml", tiny, lambda c: c["tasks"]["arc_easy"].update(max_new_tokens=7))
    stats, _ = dry(wd, "--configfile", t)
    assert stats == {"infer": 6, "score": 6, "merge_cell": 6, **TAIL}


# ------------------------------------------------------------------------------------------------------------- docs
DOC = REPO / "docs/WORKFLOW.md"


def test_docs_name_every_config_key():
    schema = yaml.safe_load((REPO / "latentmas/schemas/config.schema.yaml").read_text())
    defs = schema["$defs"]

    def resolve(s):
        return defs[s["$ref"].split("/")[-1]] if "$ref" in s else s

    doc = DOC.read_text()
    missing = []
    for key, sub in schema["properties"].items():
        sub = resolve(sub)
        if key in ("models", "tasks"):
            inner = resolve(sub["additionalProperties"])
            placeholder = "<name>" if key == "models" else "<task>"
            missing += [f"{key}.{placeholder}.{k}" for k in inner["properties"]
                        if f"`{key}.{placeholder}.{k}`" not in doc]
        elif key == "resources":
            row = next(line for line in doc.splitlines() if line.startswith("| `resources.<rule>`"))
            missing += [f"resources.{k}" for k in list(sub["properties"]) + list(defs["ruleResources"]["properties"])
                        if f"`{k}`" not in row]
        elif key == "extra_cells":
            row = next(line for line in doc.splitlines() if line.startswith("| `extra_cells[]`"))
            missing += [f"extra_cells[].{k}" for k in sub["items"]["properties"] if k not in row]
        elif sub.get("type") == "object" and "properties" in sub:
            missing += [f"{key}.{k}" for k in sub["properties"] if f"`{key}.{k}`" not in doc]
        elif f"`{key}`" not in doc:
            missing.append(key)
    assert not missing, f"docs/WORKFLOW.md does not describe: {missing}"


def test_docs_job_count_table_matches_the_configs():
    rows = [line for line in DOC.read_text().splitlines() if re.match(r"^\| `config/.*\.yaml`", line)]
    assert len(rows) == 5
    for row in rows:
        cols = [c.strip() for c in row.strip("|").split("|")]
        cfg = yaml.safe_load((REPO / cols[0].split("`")[1]).read_text())
        exp = grid_arithmetic(cfg)
        got = dict(zip(["cells", "fetch_dataset", "fetch_model", "align", "infer", "score", "merge_cell", "total"],
                       map(int, cols[1:])))
        assert got == {"cells": exp["merge_cell"], **{k: exp[k] for k in list(got)[1:-1]},
                       "total": sum(exp.values())}, row
