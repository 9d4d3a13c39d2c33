"""Issue acceptance on the real Qwen2.5-Coder-0.5B (fetched by `make model`); skipped when it is not present.

Run with: `python -m pytest -q tests/test_real_model.py` after `make model` (about 4 minutes on a 2-core CPU).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from latentmas.alignment import compute_alignment
from latentmas.decoding import DecodeSettings
from latentmas.latent import LatentMapper
from latentmas.methods import MethodSettings, SampleInput, run_batch
from latentmas.tasks import get_task
from latentmas.topology import load_topology

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mapper(real_lm):
    al = compute_alignment(real_lm.model)
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
