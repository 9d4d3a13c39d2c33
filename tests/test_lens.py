"""The latent lens (engine/lens.py), latent health tables/figures and the audit pages (report/audit.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from latentmas.engine import latent as latent_mod
from latentmas.engine.decoding import DecodeSettings
from latentmas.engine.latent import LatentMapper
from latentmas.engine.lens import LatentLens, step_flags, summary_bytes_per_sample
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.topology import load_topology


def _mapper(lm):
    from latentmas.engine.alignment import compute_alignment

    al = compute_alignment(lm.model, 1e-5)
    return LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)


def _samples(n=2):
    qs = ["What is 2+3?", "A farmer has 7 cows and buys 5 more. How many cows now?"]
    return [SampleInput(f"s{i}", qs[i % 2], "Answer with a number.", seed=i) for i in range(n)]


def _settings(trace, steps=3):
    return MethodSettings("latent_mas", latent_steps=steps, decode=DecodeSettings(4, greedy=True), trace=trace)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_lens_matches_a_direct_forward(tiny_lm, arch):
    """Step t's lens = the full model's next-token logits after the prompt and t fed vectors, recomputed from scratch
    with one plain forward over [prompt embeddings, vec_0..vec_{t-1}]. Catches a transposed/wrong head (qwen2 is
    untied), a lens read one position late or early (the post-step hidden state), re-applying the final norm, and
    nearest-embedding cosines against the wrong matrix or axis."""
    lm = tiny_lm(arch)
    mapper = _mapper(lm)
    seen = []
    original = latent_mod.latent_rollout

    def spy(*args, observer=None, **kw):
        def both(step, hidden, vec):
            seen.append(vec.clone())
            observer(step, hidden, vec)
        return original(*args, observer=both, **kw)

    import latentmas.engine.methods as methods
    methods.latent_rollout, saved = spy, methods.latent_rollout
    try:
        topo = load_topology("sequential")
        out = run_batch(lm, topo, _samples(1), _settings("full", steps=3), mapper)[0]
    finally:
        methods.latent_rollout = saved
    first = out.agents[0]
    col = first["latent"]["lens"]
    prompt_ids = lm.tokenizer(first["prompt"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    emb = lm.model.get_input_embeddings()(prompt_ids)  # [1, S, d] (gemma3: scaled as the model sees it)
    vecs = seen[:3]  # the first agent's three fed vectors
    w_in = lm.model.get_input_embeddings().weight.float()
    for t in range(3):
        x = torch.cat([emb] + [v[:, None, :].to(emb.dtype) for v in vecs[:t]], dim=1)
        with torch.no_grad():
            logits = lm.model(inputs_embeds=x).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        assert col["top_id"][t] == logp.topk(10).indices.tolist(), f"step {t}"
        assert col["top_p"][t] == pytest.approx(logp.topk(10).values.exp().tolist(), abs=2e-4)
        assert col["entropy"][t] == pytest.approx(float(-(logp.exp() * logp).sum()), abs=2e-4)
        cos = torch.nn.functional.cosine_similarity(vecs[t].float(), w_in, dim=-1)  # [V]
        assert col["near_id"][t] == cos.topk(5).indices.tolist()
        assert col["near_cos"][t] == pytest.approx(cos.topk(5).values.tolist(), abs=2e-4)
    assert col["top"][0] == [lm.tokenizer.decode([i]) for i in col["top_id"][0]]
    # after-map norm / before-map norm, with the rollout's own after-map norms
    assert col["ratio"] == pytest.approx([a / h for a, h in zip(first["latent"]["norms"], col["norm_h"])], rel=1e-3)
    assert col["cos_prev"][0] is None and col["drift"][0] == pytest.approx(0.0, abs=1e-4)


def test_trace_none_never_builds_an_observer(tiny_lm, monkeypatch):
    """`trace: none` passes observer=None to every rollout (the rollout's no-extra-work path) and records no lens or
    prompt; summary passes one. Catches an always-on lens (a per-step cost for every run)."""
    import latentmas.engine.methods as methods

    lm = tiny_lm("qwen2")
    mapper = _mapper(lm)
    got = []
    original = methods.latent_rollout

    def spy(*args, observer=None, **kw):
        got.append(observer)
        return original(*args, observer=observer, **kw)

    monkeypatch.setattr(methods, "latent_rollout", spy)
    topo = load_topology("sequential")
    none = run_batch(lm, topo, _samples(2), _settings("none"), mapper)
    assert got and all(o is None for o in got)
    assert all("lens" not in a["latent"] and "prompt" not in a for o in none for a in o.agents if a["latent"])
    got.clear()
    summ = run_batch(lm, topo, _samples(2), _settings("summary"), mapper)
    assert got and all(o is not None for o in got)
    # the lens does not change what the model computes
    assert [o.final_text for o in none] == [o.final_text for o in summ]
    assert [a["latent"]["norms"] for a in none[0].agents if a["latent"]] == \
        [a["latent"]["norms"] for a in summ[0].agents if a["latent"]]


def test_summary_is_compact_and_bench_can_measure_it(tiny_lm):
    """summary keeps 3 lens tokens and 1 nearest token per step and no ids; full keeps more. Catches a summary that
    silently stores the full trace (records balloon) and a size function that counts nothing."""
    lm = tiny_lm("qwen2")
    mapper = _mapper(lm)
    topo = load_topology("sequential")
    recs = {lv: [{"agents": o.agents} for o in run_batch(lm, topo, _samples(2), _settings(lv, 4), mapper)]
            for lv in ("summary", "full")}
    col = recs["summary"][0]["agents"][0]["latent"]["lens"]
    assert len(col["top"]) == 4 and all(len(t) == 3 for t in col["top"]) and all(len(n) == 1 for n in col["near"])
    assert "top_id" not in col
    small, big = summary_bytes_per_sample(recs["summary"]), summary_bytes_per_sample(recs["full"])
    assert 0 < small < big
    per_record = [sum(len(json.dumps(a["latent"]["lens"], ensure_ascii=False)) for a in r["agents"] if a["latent"])
                  for r in recs["summary"]]
    assert small == sum(per_record) / 2


def test_health_flags_and_warning_name_agent_and_step(caplog):
    """A norm blow-up at step 2 and a near-uniform lens at step 1 are flagged at those steps; a healthy step is not.
    Catches flags computed against the wrong baseline or an off-by-one step index."""
    col = {"norm_h": [10.0, 11.0, 80.0, None], "entropy": [1.0, 9.9, 1.0, None], "log_vocab": 10.0}
    assert step_flags(col) == [{"step": 1, "kind": "entropy"}, {"step": 2, "kind": "norm"},
                               {"step": 3, "kind": "nonfinite"}]
    from latentmas.engine.lens import AgentLens

    rec = AgentLens.__new__(AgentLens)
    rec.agent, rec.bsz = "critic", 1
    with caplog.at_level("WARNING"):
        rec._warn([{"flags": step_flags(col)}])
    text = caplog.text
    assert "agent critic step 2: norm" in text and "agent critic step 1: entropy" in text
    assert math.isfinite(col["log_vocab"])
