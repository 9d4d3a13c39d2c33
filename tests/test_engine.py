"""The engine's exactness guarantees, on tiny random models of three architectures (and the real 0.5B if present)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from latentmas.engine.alignment import compute_alignment, load_or_compute, target_norm
from latentmas.engine.checks import check_alignment, check_batch_invariance, check_handoff
from latentmas.engine.decoding import DecodeSettings
from latentmas.engine.kv import SequenceBatch, extend, keep_columns, left_pad, memory_columns, prefill_mode
from latentmas.engine.latent import LatentMapper
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.models import encode, render_chat
from latentmas.engine.topology import load_topology

ARCHS = ["llama", "qwen2", "gemma3"]


def _mapper(lm):
    al = compute_alignment(lm.model)
    return LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_handoff_equals_one_forward_over_concatenation(tiny_lm, arch):
    lm = tiny_lm(arch)
    res = check_handoff(lm, _mapper(lm), steps=10, rtol=1e-4)
    assert res.passed, res.detail
    assert res.max_abs_diff <= 1e-4 * res.scale


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_handoff_check_catches_wrong_positions(tiny_lm, arch):
    lm = tiny_lm(arch)
    res = check_handoff(lm, _mapper(lm), steps=4, rtol=1e-4, position_shift=1)
    assert not res.passed
    assert res.max_abs_diff > 1e-2 * res.scale


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_rollout_matches_alone(tiny_lm, arch):
    lm = tiny_lm(arch)
    res = check_batch_invariance(lm, _mapper(lm), steps=6, rtol=1e-4)
    assert res.passed, res.detail


@pytest.mark.parametrize("arch", ARCHS)
def test_w_a_equals_numpy_ridge_lstsq(tiny_lm, arch):
    lm = tiny_lm(arch)
    lam = 1e-5
    al = compute_alignment(lm.model, lam)
    w_out = lm.model.get_output_embeddings().weight.detach().double().numpy()
    with torch.no_grad():
        w_in = lm.model.get_input_embeddings()(torch.arange(w_out.shape[0])).double().numpy()
    d = w_out.shape[1]
    a = np.vstack([w_out, np.sqrt(lam) * np.eye(d)])
    b = np.vstack([w_in, np.zeros((d, d))])
    ref = np.linalg.lstsq(a, b, rcond=None)[0]
    rel = np.linalg.norm(al.w_a.double().numpy() - ref) / np.linalg.norm(ref)
    assert rel < 1e-4
    assert check_alignment(lm, al).passed


def test_target_norm_is_what_gemma_actually_sees(tiny_lm):
    lm = tiny_lm("gemma3")
    raw = float(lm.model.get_input_embeddings().weight.detach().double().norm(dim=-1).mean())
    seen = target_norm(lm.model)
    scale = lm.model.config.hidden_size ** 0.5  # Gemma scales embeddings by sqrt(hidden) inside the layer
    assert seen == pytest.approx(raw * scale, rel=1e-3)
    assert compute_alignment(lm.model).target_norm == pytest.approx(seen, rel=1e-9)


def test_untied_head_is_used(tiny_lm):
    """The engine's logits (production ``extend(want="logits")``) are the final hidden state times the *untied*
    lm_head, computed here independently. Catches: logits through the input embeddings (a tied-head assumption), or
    the fixture silently tied (then the two heads below would agree)."""
    lm = tiny_lm("qwen2")
    w_out = lm.model.get_output_embeddings().weight.detach()
    w_in = lm.model.get_input_embeddings().weight.detach()
    assert w_out.data_ptr() != w_in.data_ptr() and not torch.allclose(w_out, w_in)
    ids = encode(lm.tokenizer, render_chat(lm.tokenizer, [{"role": "user", "content": "Which head?"}]))
    batch = SequenceBatch.empty(lm.model, 1, lm.device)
    p_ids, p_mask = left_pad([ids], lm.pad_token_id, lm.device)
    logits = extend(lm.model, batch, p_mask, input_ids=p_ids, want="logits")[0]
    with torch.no_grad():
        h = lm.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    torch.testing.assert_close(logits, h @ w_out.T, rtol=1e-4, atol=1e-4)
    assert (logits - h @ w_in.T).abs().max() > 1e-2 * logits.abs().max()


def test_alignment_file_is_reused_and_keyed_by_weights_and_lambda(tiny_lm, tmp_path, monkeypatch):
    import latentmas.engine.alignment as A

    lm = tiny_lm("qwen2")
    path = tmp_path / "qwen2.safetensors"
    first = load_or_compute(lm.model, path, 1e-5)
    assert path.exists()

    def boom(*a, **k):
        raise AssertionError("recomputed although a matching file exists")

    monkeypatch.setattr(A, "compute_alignment", boom)
    second = load_or_compute(lm.model, path, 1e-5)
    assert torch.equal(first.w_a, second.w_a) and second.fingerprint == first.fingerprint
    with pytest.raises(AssertionError, match="recomputed"):
        load_or_compute(lm.model, path, 1e-3)  # another lambda is another W_a


def _gsm8k_inputs(n=4):
    from latentmas.eval.tasks import get_task

    task = get_task("gsm8k")
    recs = task.load()[:n]
    return [SampleInput(r["id"], task.user_prompt(r), task.answer_instruction, i) for i, r in enumerate(recs)]


def _settings(method, steps=2, max_new=6, memory="all"):
    return MethodSettings(method=method, latent_steps=steps, memory=memory, decode=DecodeSettings(max_new, True),
                          agent_max_new_tokens=4)


@pytest.mark.parametrize("prefill", ["padded", "per_row"])
@pytest.mark.parametrize("method", ["baseline", "text_mas", "latent_mas"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_methods_are_batch_invariant(tiny_lm, method, arch, prefill):
    lm = tiny_lm(arch)
    samples = _gsm8k_inputs(4)
    assert len({len(s.question) for s in samples}) == 4  # different lengths -> real padding
    topo = load_topology("single" if method == "baseline" else "sequential")
    mapper = _mapper(lm)
    with prefill_mode(prefill):  # both ways of reading a padded prompt (per_row is the CPU default)
        together = run_batch(lm, topo, samples, _settings(method), mapper)
        alone = [run_batch(lm, topo, [s], _settings(method), mapper)[0] for s in samples]
    for t, a in zip(together, alone):
        assert t.final_text == a.final_text
        assert [x["input_tokens"] for x in t.agents] == [x["input_tokens"] for x in a.agents]
        assert [x["generated_tokens"] for x in t.agents] == [x["generated_tokens"] for x in a.agents]
        assert t.error is None
        for x, y in zip(t.agents, a.agents):
            if x["latent"]:
                np.testing.assert_allclose(x["latent"]["norms"], y["latent"]["norms"], rtol=1e-4)


def _prefill_twice_then_decode(lm, mode: str):
    """Two left-padded prompt segments (the second on top of the first's padded cache), then one decode step."""
    calls = []
    hook = lm.model.base_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with prefill_mode(mode):
            batch = SequenceBatch.empty(lm.model, 3, lm.device)
            for seqs in ([[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]], [[3, 4, 5, 6], [7], [8, 9]]):
                ids, mask = left_pad(seqs, lm.pad_token_id, lm.device)
                hidden = extend(lm.model, batch, mask, input_ids=ids, want="hidden")
            step = torch.tensor([[1], [2], [3]], device=lm.device)
            logits = extend(lm.model, batch, torch.ones_like(step), input_ids=step, want="logits")
    finally:
        hook.remove()
    return hidden, logits, batch, len(calls)


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_prefill_per_row_equals_padded(tiny_lm, arch):
    """``per_row`` (the CPU default) reads each sample's prompt over its real tokens only; it must leave the same
    cache at every real slot, the same mask and positions, and the same last hidden states and next-token logits as
    one padded forward. Sliding-window models (gemma3) keep the padded forward."""
    lm = tiny_lm(arch)
    h_pad, l_pad, b_pad, n_pad = _prefill_twice_then_decode(lm, "padded")
    h_row, l_row, b_row, n_row = _prefill_twice_then_decode(lm, "per_row")
    assert n_pad == 3 and n_row == (3 if arch == "gemma3" else 7)  # one forward per row and prompt segment
    assert _prefill_twice_then_decode(lm, "auto")[3] == n_row  # auto on a CPU = per_row
    torch.testing.assert_close(h_row, h_pad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l_row, l_pad, rtol=1e-5, atol=1e-5)
    assert torch.equal(b_row.attention_mask, b_pad.attention_mask)
    assert torch.equal(b_row.next_position, b_pad.next_position)
    real = b_pad.attention_mask.bool()  # [B, T]
    for lp, lr in zip(b_pad.cache.layers, b_row.cache.layers):
        for got, want in ((lr.keys, lp.keys), (lr.values, lp.values)):  # [B, H, T, D]
            assert got.shape == want.shape
            torch.testing.assert_close(got.transpose(1, 2)[real], want.transpose(1, 2)[real], rtol=1e-5, atol=1e-5)


def test_latent_steps_zero_still_hands_over_prompt_memory(tiny_lm):
    """Documented choice: with 0 latent steps the final agent still attends to every predecessor's prompt.
    Checked against HF generate on the plain concatenation of all agents' prompt tokens."""
    lm = tiny_lm("llama")
    topo = load_topology("sequential")
    s = _gsm8k_inputs(1)[0]
    out = run_batch(lm, topo, [s], _settings("latent_mas", steps=0, max_new=8), _mapper(lm))[0]
    tok = lm.tokenizer
    ids = []
    for agent in topo.agents:
        ids += encode(tok, render_chat(tok, topo.render(agent, s.question, s.answer_instruction, "latent")))
    gen = lm.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                            eos_token_id=lm.eos_token_ids, pad_token_id=lm.pad_token_id)
    ref = [t for t in gen[0, len(ids):].tolist() if t not in lm.eos_token_ids]
    assert out.final_text == tok.decode(ref, skip_special_tokens=True)
    assert out.agents[0]["latent_steps"] == 0


def test_memory_previous_equals_masking_out_earlier_agents(tiny_lm):
    """Dropping agent a's cache columns must equal keeping them but masking them out of attention. b's cached
    keys/values keep what they computed while a was present (that is what handing over b's memory means)."""
    lm = tiny_lm("qwen2")
    model, mapper = lm.model, _mapper(lm)
    tok = lm.tokenizer
    p = [encode(tok, render_chat(tok, [{"role": "user", "content": t}])) for t in ("first agent", "second one", "fin")]

    def build():
        batch = SequenceBatch.empty(model, 1, lm.device)
        for name, ids_list in (("a", p[0]), ("b", p[1])):
            ids, mask = left_pad([ids_list], lm.pad_token_id, lm.device)
            h = extend(model, batch, mask, input_ids=ids, agent=name)
            for _ in range(3):
                v, _ = mapper(h)
                h = extend(model, batch, torch.ones(1, 1, dtype=torch.long), inputs_embeds=v[:, None, :],
                           agent=name, kind="latent")
        return batch

    batch = build()
    n_a = len(p[0]) + 3
    cols = memory_columns(batch, "previous", "b")
    assert cols == list(range(n_a, n_a + len(p[1]) + 3))
    ids, mask = left_pad([p[2]], lm.pad_token_id, lm.device)
    got = extend(model, keep_columns(model, batch, cols), mask, input_ids=ids, want="logits", agent="c")
    masked = build()
    masked.attention_mask[:, :n_a] = 0
    ref = extend(model, masked, mask, input_ids=ids, want="logits", agent="c")
    full = extend(model, build(), mask, input_ids=ids, want="logits", agent="c")
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    assert float((full - ref).abs().max()) > 1e-3  # and dropping memory really changes the result
    assert len(memory_columns(batch, "latent_only", "b")) == 6
    assert memory_columns(batch, "all", "b") is None


def test_nonfinite_latent_fails_only_that_sample(tiny_lm):
    lm = tiny_lm("llama")
    topo = load_topology("sequential")
    samples = _gsm8k_inputs(2)
    mapper = _mapper(lm)
    clean = run_batch(lm, topo, samples[:1], _settings("latent_mas"), mapper)[0]

    def poison(module, args, kwargs, output):
        hs = output.last_hidden_state
        if hs.shape[1] == 1 and hs.shape[0] == 2:  # latent steps of the 2-sample batch
            hs[1] = float("nan")
        return output

    handle = lm.model.base_model.register_forward_hook(poison, with_kwargs=True)
    try:
        outs = run_batch(lm, topo, samples, _settings("latent_mas"), mapper)
    finally:
        handle.remove()
    assert outs[1].error == "non-finite latent at agent planner step 1"
    assert outs[1].agents[0]["latent"]["nonfinite"] is True
    assert outs[0].error is None and outs[0].final_text == clean.final_text


def test_real_qwen_handoff_and_batching(real_lm):
    """Issue acceptance on the real Qwen2.5-Coder-0.5B (skipped when the model is not fetched)."""
    from latentmas.engine.alignment import compute_alignment_isolated

    al = compute_alignment_isolated(real_lm.path)  # never in-process on the real model (see its docstring)
    mapper = LatentMapper(al.target_norm, al.w_a, real_lm.device, real_lm.dtype)
    res = check_handoff(real_lm, mapper, steps=10, rtol=1e-4)
    assert res.passed, res.detail
    assert check_batch_invariance(real_lm, mapper, steps=10).passed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (GPU-only test; skipped on CPU)")
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_handoff_and_batching_on_cuda(tiny_model_dir, dtype, rtol):
    from latentmas.engine.models import load_model

    lm = load_model(str(tiny_model_dir("qwen2")), dtype=dtype, device="cuda")
    mapper = _mapper(lm)
    assert check_handoff(lm, mapper, steps=10, rtol=rtol).passed
    assert check_batch_invariance(lm, mapper, steps=10, rtol=max(rtol, 2e-3)).passed


def test_isolated_w_a_equals_in_process_and_keys_across_dtypes(tiny_model_dir, tmp_path):
    """W_a for inference is computed in a fresh process (float64 BLAS state must not leak into float32 numerics);
    it must equal the in-process solve, and the fingerprint must not depend on the dtype the model is loaded in."""
    from latentmas.engine.alignment import weight_fingerprint
    from latentmas.engine.models import load_model

    path = str(tiny_model_dir("qwen2"))
    lm = load_model(path, dtype="float32", device="cpu")
    iso = load_or_compute(lm.model, tmp_path / "w.safetensors", 1e-5, model_path=path)
    ref = compute_alignment(lm.model, 1e-5)
    assert torch.allclose(iso.w_a, ref.w_a, rtol=1e-6, atol=1e-7) and iso.fingerprint == ref.fingerprint
    bf16 = load_model(path, dtype="bfloat16", device="cpu")
    assert weight_fingerprint(bf16.model) == ref.fingerprint


def test_progress_callback_sees_every_agent_step_and_changes_nothing(tiny_lm):
    """run_batch(progress=f) calls f(agent, kind) once per prompt, per latent step and per fed-back token, and the
    outputs are those of a run without it. Catches a hook that is dropped on some path (latent agents, the final
    agent), that fires per sample instead of per step, or that leaks past the batch (kv.STEP_HOOK reset)."""
    from latentmas.engine.kv import STEP_HOOK

    lm = tiny_lm("llama")
    topo = load_topology("sequential")
    samples = _gsm8k_inputs(2)
    events: list[tuple[str, str]] = []
    with_progress = run_batch(lm, topo, samples, _settings("latent_mas", steps=3), _mapper(lm),
                              progress=lambda agent, kind: events.append((agent, kind)))
    plain = run_batch(lm, topo, samples, _settings("latent_mas", steps=3), _mapper(lm))
    assert [o.final_text for o in with_progress] == [o.final_text for o in plain]
    assert STEP_HOOK.get() is None
    names = [a.name for a in topo.agents]
    assert [a for a, k in events if k == "prompt"] == names
    for a in names[:-1]:
        assert sum(1 for x, k in events if x == a and k == "latent") == 3
    fed = sum(1 for x, k in events if x == names[-1] and k == "text")
    longest = max(o.agents[-1]["generated_tokens"] for o in plain)
    assert longest - 1 <= fed <= min(longest, 6 - 1)  # each token but the last is fed back (a final EOS is too)
    assert {k for _, k in events} <= {"prompt", "latent", "text"}


def test_step_reporter_logs_agent_starts_and_then_at_most_once_per_interval():
    """The job log gets a line when an agent starts and then one per interval, naming batch, agent and step.
    Catches a reporter that logs every token (a 512-token answer would flood the log) or never between agents."""
    from latentmas.progress import StepReporter

    now = [0.0]
    rep = StepReporter(latent_steps=10, max_new_tokens=512, interval_s=5.0, clock=lambda: now[0])
    rep.start_batch(1, 3, 4)
    rep("planner", "prompt")
    for _ in range(10):
        now[0] += 1.0
        rep("planner", "latent")
    rep("judger", "prompt")
    for _ in range(3):
        now[0] += 3.0
        rep("judger", "text")
    assert rep.lines == ["batch 2/3 (4 samples) agent planner: prompt read",
                         "batch 2/3 (4 samples) agent planner: latent step 5/10",
                         "batch 2/3 (4 samples) agent planner: latent step 10/10",
                         "batch 2/3 (4 samples) agent judger: prompt read",
                         "batch 2/3 (4 samples) agent judger: token 3/512 (at most)"]
