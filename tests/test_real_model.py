"""Issue acceptance on the real Qwen2.5-Coder-0.5B (fetched by `make model`); skipped when it is not present.

Run with: `python -m pytest -q tests/test_real_model.py` after `make model` (about 4 minutes on a 2-core CPU).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from latentmas.engine.alignment import compute_alignment_isolated
from latentmas.engine.decoding import DecodeSettings
from latentmas.engine.latent import LatentMapper
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.eval.tasks import get_task
from latentmas.engine.topology import load_topology

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mapper(real_lm):
    al = compute_alignment_isolated(real_lm.path)  # as `latentmas run` does: never in the inference process
    return LatentMapper(al.target_norm, al.w_a, real_lm.device, real_lm.dtype)


@pytest.mark.parametrize("method", ["latent_mas", "text_mas"])
def test_real_model_greedy_batch_invariance(real_lm, mapper, method):
    task = get_task("gsm8k")
    recs = task.load()[:4]
    samples = [SampleInput(r["id"], task.user_prompt(r), task.answer_instruction, 0) for r in recs]
    topo = load_topology("sequential")
    settings = MethodSettings(method=method, latent_steps=4, decode=DecodeSettings(48, True), agent_max_new_tokens=24)
    together = run_batch(real_lm, topo, samples, settings, mapper)
    alone = [run_batch(real_lm, topo, [s], settings, mapper)[0] for s in samples]
    for rec, t, a in zip(recs, together, alone):
        assert task.extract(t.final_text, rec) == task.extract(a.final_text, rec)
        assert [x["generated_tokens"] for x in t.agents] == [x["generated_tokens"] for x in a.agents]
        assert [x["input_tokens"] for x in t.agents] == [x["input_tokens"] for x in a.agents]


def test_real_model_check_model_cli(real_lm):
    proc = subprocess.run([sys.executable, "-m", "latentmas.cli", "check-model", real_lm.path, "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count('"passed": true') == 3


def test_real_model_run_killed_and_resumed_equals_uninterrupted(real_lm, tmp_path):
    """`latentmas run` on the real model, GSM8K, 4 samples: SIGKILL after the first record, rerun, compare."""
    import signal
    import time

    from latentmas.records import read_records

    def cmd(out):
        return [sys.executable, "-m", "latentmas.cli", "run", "--model", real_lm.path, "--task", "gsm8k",
                "--method", "latent_mas", "--latent-steps", "4", "--n", "4", "--batch-size", "1", "--greedy",
                "--max-new-tokens", "24", "--out", str(out)]

    ref, out = tmp_path / "ref.jsonl", tmp_path / "killed.jsonl"
    subprocess.run(cmd(ref), check=True, capture_output=True)
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and len(read_records(out)) < 1:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len(read_records(out)) < 4
    subprocess.run(cmd(out), check=True, capture_output=True)
    strip = lambda r: (r["sample_id"], r["final_text"], r["tokens"], r["status"])  # noqa: E731
    assert [strip(r) for r in read_records(out)] == [strip(r) for r in read_records(ref)]
