"""The shard runner: deterministic slices, resume after a crash (real SIGKILL), identity checks, OOM back-off."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from latentmas.records import read_records
from latentmas.pipeline.runner import RunConfigError, cli_main, parse_shard, shard_slice

VOLATILE = {"wall_s", "peak_mem_mb", "batch_size"}


def _stable(rec: dict, approx: bool = False) -> dict:
    """A record without timings; with ``approx`` its latent norms (a float summary that carries batch-shape noise
    of ~1e-7) compare approximately."""
    out = {k: v for k, v in rec.items() if k not in VOLATILE}
    agents = []
    for a in rec["agents"]:
        a = {k: v for k, v in a.items() if k != "wall_s"}
        if approx and a.get("latent"):
            a["latent"] = {**a["latent"], "norms": pytest.approx(a["latent"]["norms"], rel=1e-4)}
        agents.append(a)
    out["agents"] = agents
    return out


def assert_same_records(got: list[dict], ref: list[dict]) -> None:
    assert [_stable(r) for r in got] == [_stable(r, approx=True) for r in ref]


def _args(model, out, *extra, method="latent_mas", n=3, batch=2):
    return ["--model", str(model), "--task", "gsm8k", "--method", method, "--n", str(n), "--batch-size", str(batch),
            "--greedy", "--max-new-tokens", "5", "--agent-max-new-tokens", "3", "--latent-steps", "2",
            "--out", str(out), *extra]


def test_shards_partition_the_samples():
    for n in (0, 1, 7, 10):
        for k in (1, 3, 4):
            seen = [i for s in range(k) for i in shard_slice(n, s, k)]
            assert seen == list(range(n))
    with pytest.raises(RunConfigError, match="--shard 3/3"):
        shard_slice(5, 3, 3)
    with pytest.raises(RunConfigError, match="expected I/N"):
        parse_shard("2")


def test_run_writes_records_and_resumes_after_torn_line(tiny_model_dir, tmp_path):
    model = tiny_model_dir("qwen2")
    full = tmp_path / "full.jsonl"
    assert cli_main(_args(model, full)) == 0
    recs = read_records(full)
    assert [r["sample_id"] for r in recs] == ["gsm8k/0000", "gsm8k/0001", "gsm8k/0002"]
    r0 = recs[0]
    assert r0["method"] == "latent_mas" and r0["arch"] == "sequential" and r0["latent_steps"] == 2
    assert [a["name"] for a in r0["agents"]] == ["planner", "critic", "refiner", "judger"]
    assert r0["tokens"]["latent"] == 6 and r0["tokens"]["total"] == sum(
        r0["tokens"][k] for k in ("prompt", "latent", "generated"))
    assert r0["gold"] == "18" and r0["status"] == "ok" and "versions" in r0

    # Simulate a crash: keep the first record and half of the second line.
    lines = full.read_bytes().split(b"\n")
    part = tmp_path / "part.jsonl"
    part.write_bytes(lines[0] + b"\n" + lines[1][: len(lines[1]) // 2])
    assert cli_main(_args(model, part)) == 0
    assert_same_records(read_records(part), recs)

    # Rerun on a complete file does nothing.
    before = part.read_bytes()
    assert cli_main(_args(model, part)) == 0
    assert part.read_bytes() == before


def test_resume_refuses_other_settings(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("qwen2")
    out = tmp_path / "a.jsonl"
    assert cli_main(_args(model, out, n=1)) == 0
    before = out.read_bytes()
    rc = cli_main(_args(model, out, "--latent-steps", "3", n=2))
    assert rc == 2
    err = capsys.readouterr().err
    assert str(out) in err and "config_hash" in err
    assert out.read_bytes() == before  # nothing lost


def test_fastest_dtype_is_recorded_as_resolved(tiny_model_dir, tmp_path, monkeypatch):
    """A ``--dtype fastest`` shard hashes the dtype it resolved to: it resumes under that explicit dtype, and a node
    whose CPU resolves ``fastest`` differently (AMX: bf16) refuses it instead of mixing float32 and bf16 records."""
    from latentmas.engine import models

    model = tiny_model_dir("qwen2")
    out = tmp_path / "a.jsonl"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert cli_main(_args(model, out, "--dtype", "fastest", n=2)) == 0
    before = out.read_bytes()
    assert cli_main(_args(model, out, "--dtype", "float32", n=2)) == 0  # the same identity: nothing left to run
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert cli_main(_args(model, out, "--dtype", "fastest", n=2)) == 2
    assert out.read_bytes() == before and len(read_records(out)) == 2


def test_oom_backoff_halves_then_fails_single_samples(tiny_model_dir, tmp_path, monkeypatch):
    model = tiny_model_dir("llama")
    ref, got, dead = tmp_path / "ref.jsonl", tmp_path / "got.jsonl", tmp_path / "dead.jsonl"
    assert cli_main(_args(model, ref, method="text_mas", n=4, batch=1)) == 0
    monkeypatch.setenv("LATENTMAS_INJECT_OOM_ABOVE", "1")
    assert cli_main(_args(model, got, method="text_mas", n=4, batch=4)) == 0
    assert_same_records(read_records(got), read_records(ref))
    monkeypatch.setenv("LATENTMAS_INJECT_OOM_ABOVE", "0")
    assert cli_main(_args(model, dead, method="text_mas", n=2, batch=2)) == 0
    recs = read_records(dead)
    assert len(recs) == 2 and all(r["status"] == "failed" for r in recs)
    assert all(r["error"] == "out of memory at batch size 1" for r in recs)


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tiny_model_dir, tmp_path):
    """Kill a real `latentmas run` process with SIGKILL several times; the final file equals an uninterrupted run."""
    model = tiny_model_dir("qwen2")
    args = _args(model, tmp_path / "x.jsonl", method="text_mas", n=6, batch=1)
    ref = tmp_path / "ref.jsonl"
    assert cli_main(_args(model, ref, method="text_mas", n=6, batch=1)) == 0
    out = tmp_path / "killed.jsonl"
    args[args.index("--out") + 1] = str(out)
    cmd = [sys.executable, "-m", "latentmas.cli", "run", *args]
    rng = random.Random(1234)
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        n_before = len(read_records(out))
        deadline = time.monotonic() + 120
        target = n_before + rng.randint(0, 2)
        # kill once the file has grown to a random record count (or at a random moment while loading)
        while proc.poll() is None and time.monotonic() < deadline:
            if len(read_records(out)) >= target and rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 0.3))
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0
        if len(read_records(out)) == 6 and proc.returncode == 0:
            break
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert kills >= 2
    got = read_records(out)
    assert_same_records(got, read_records(ref))
    assert len({r["sample_id"] for r in got}) == len(got) == 6


def test_config_plus_cell_id_gives_the_pipelines_arguments(tmp_path, capsys):
    """`latentmas run --config FILE --cell ID` runs exactly what the pipeline's infer job runs for that shard."""
    from latentmas.pipeline import experiment
    from latentmas.pipeline.runner import expand_cell_argv

    cfg_path = "config/tests/tiny.yaml"
    cell = "tiny-qwen2/gsm8k/latent_mas-sequential-k2-realign/seed0"
    argv = expand_cell_argv(["--config", cfg_path, "--cell", cell, "--shard", "1/2", "--out", "o.jsonl",
                             "--batch-size", "1"])
    cfg = experiment.load_config(cfg_path)
    settings = experiment.cell_settings(cfg, experiment.get_cell(cfg, cell), 1, 2)
    expected = experiment.run_args(settings, "resources/models/tiny-qwen2", "tiny-qwen2",
                                   "results/data/gsm8k.parquet", "results/align/tiny-qwen2.safetensors")
    assert argv[: len(expected)] == expected
    assert argv[len(expected):] == ["--out", "o.jsonl", "--batch-size", "1"]  # explicit options override
    assert ["--latent-steps", "2"] == argv[argv.index("--latent-steps"): argv.index("--latent-steps") + 2]
    assert cli_main(["--config", cfg_path, "--cell", "tiny-qwen2/gsm8k/nope/seed0", "--out", str(tmp_path / "x")]) == 2
    assert "'tiny-qwen2/gsm8k/nope/seed0' is not a cell of this config" in capsys.readouterr().err
