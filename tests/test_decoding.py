"""The sampler: filters against transformers' own processors, exact supports on constructed distributions, the
inverse-CDF draw, and per-sample reproducibility through the real decode loop (tiny models)."""
from __future__ import annotations

import pytest
import torch

from latentmas.engine.decoding import (DecodeSettings, _presence, apply_repetition_penalty, filtered_distribution,
                                       pick_tokens, sample_from)
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.topology import load_topology

PAPER = dict(temperature=0.6, top_p=0.95)  # the paper's sampling settings


def _support(logits: torch.Tensor, n: int = 4000, **kw) -> set[int]:
    """Every id the sampler can return for one row, probed with n stratified uniforms over [0, 1)."""
    settings = DecodeSettings(8, greedy=False, **{"temperature": 1.0, "top_p": 1.0, **kw})
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    picks = pick_tokens(logits.expand(n, -1), settings, u)
    return set(picks.tolist())


def _logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().to(torch.float32)[None]


def test_top_k_support_is_exactly_the_k_largest():
    """Catches: top-k ignored, off-by-one k (k±1 tokens), or keeping the k *smallest* (ascending sort)."""
    probs = [0.05, 0.30, 0.02, 0.25, 0.18, 0.20]
    assert _support(_logits_of(probs), top_k=3) == {1, 3, 5}
    assert _support(_logits_of(probs), top_k=1) == {1}
    assert _support(_logits_of(probs), top_k=0) == set(range(6))  # 0 = off


def test_top_p_support_is_the_smallest_nucleus():
    """Catches: an inclusive/exclusive cumsum mix-up (one token too many or too few) and dropping the top token when
    it alone exceeds top_p. Sorted probs 0.4, 0.3, 0.2, 0.1: mass before each 0, .4, .7, .9."""
    probs = [0.1, 0.4, 0.2, 0.3]
    assert _support(_logits_of(probs), top_p=0.65) == {1, 3}
    assert _support(_logits_of(probs), top_p=0.75) == {1, 3, 2}
    assert _support(_logits_of(probs), top_p=0.3) == {1}


def test_min_p_support_is_relative_to_the_top_token():
    """Catches: min_p compared with absolute probability instead of min_p × p_max, or with ≤ instead of <."""
    probs = [0.5, 0.2, 0.1, 0.15, 0.05]  # threshold 0.3 × 0.5 = 0.15: keeps 0.5, 0.2, 0.15
    assert _support(_logits_of(probs), min_p=0.3) == {0, 1, 3}
    assert _support(_logits_of(probs), min_p=0.3, top_k=2) == {0, 1}


def test_inverse_cdf_draw_frequencies_equal_the_filtered_distribution():
    """Stratified uniforms hit each token in proportion to its renormalised probability (within 1/n). Catches a CDF
    off by one token (mass shifted to a neighbour), temperature applied twice or not at all, and no renormalisation
    after filtering."""
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0, 1.5]])
    n = 20000
    for kw in ({"temperature": 0.7, "top_p": 1.0}, {"temperature": 1.3, "top_p": 0.8}, {"temperature": 1.0,
                                                                                         "top_p": 1.0, "top_k": 3}):
        settings = DecodeSettings(8, greedy=False, **kw)
        probs, ids = filtered_distribution(logits, settings)
        want = torch.zeros(5, dtype=torch.float64).scatter(0, ids[0], (probs[0] / probs[0].sum()).double())
        u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        got = torch.bincount(sample_from(probs.expand(n, -1), ids.expand(n, -1), u), minlength=5).double() / n
        assert torch.allclose(got, want, atol=2.0 / n), (kw, got, want)


@pytest.mark.parametrize("kw", [dict(PAPER), dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05),
                                dict(temperature=1.0, top_p=1.0, min_p=0.1), dict(temperature=0.5, top_k=7, top_p=1.0)])
def test_filters_match_transformers_warpers_on_random_logits(kw):
    """Independent reference: transformers' Temperature/TopK/TopP/MinP warpers in generate's order. Our nonzero
    support must equal their finite support and our renormalised probabilities their softmax. Catches a different
    filter order (e.g. min-p before top-p, temperature after top-p) and any filter that drifts from generate's."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=g) * 3
    s = DecodeSettings(8, greedy=False, **{"top_p": 1.0, **kw})
    procs = [TemperatureLogitsWarper(s.temperature)]
    if s.top_k:
        procs.append(TopKLogitsWarper(s.top_k))
    if s.top_p < 1:
        procs.append(TopPLogitsWarper(s.top_p))
    if s.min_p:
        procs.append(MinPLogitsWarper(s.min_p))
    ref = torch.softmax(LogitsProcessorList(procs)(torch.zeros(6, 1, dtype=torch.long), logits.clone()), dim=-1)
    probs, ids = filtered_distribution(logits, s)
    ours = torch.zeros_like(logits).scatter(1, ids, probs / probs.sum(dim=-1, keepdim=True))
    assert torch.equal(ours > 0, ref > 0)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_repetition_penalty_matches_transformers_processor():
    """Constructed case: positive and negative logits, repeated ids and pad slots. Catches dividing negative
    logits (which would *raise* their probability), penalising each occurrence again, and counting pad slots."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0, 0.0], [1.0, 1.0, -2.0, 4.0, -0.5, 3.0]])
    ids = torch.tensor([[0, 1, 1, 5, 4], [5, 3, 2, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])  # row 0's last slot and row 1's first are pads
    ours = apply_repetition_penalty(logits, _presence(ids, mask, 2, 6, torch.device("cpu")), 1.3)
    proc = RepetitionPenaltyLogitsProcessor(penalty=1.3)
    for b in range(2):
        real = ids[b][mask[b].bool()][None]
        assert torch.equal(ours[b], proc(real, logits[b:b + 1].clone())[0])
    assert ours[1, 3] == pytest.approx(4.0 / 1.3) and ours[1, 2] == pytest.approx(-2.0 * 1.3)
    assert ours[0, 4] == 1.0 and ours[1, 5] == 3.0  # ids seen only in pad slots are not penalised


def test_greedy_decode_with_repetition_penalty_equals_generate(tiny_lm):
    """Through the production decode loop: greedy + repetition_penalty must equal HF generate on the same prompt
    (which penalises the prompt ids and every generated id). Catches penalising generated ids only, forgetting the
    penalty on greedy, or not updating the seen-set as tokens are emitted."""
    from latentmas.engine.models import encode, render_chat

    lm = tiny_lm("llama")
    topo = load_topology("single")
    s = SampleInput("x", "Repeat after me: abc abc abc abc", "Answer.", 0)
    out = run_batch(lm, topo, [s], MethodSettings("baseline", decode=DecodeSettings(12, True,
                                                                                    repetition_penalty=1.5)))[0]
    ids = encode(lm.tokenizer, render_chat(lm.tokenizer, topo.render(topo.agents[0], s.question,
                                                                      s.answer_instruction, "none", {})))
    gen = lm.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, repetition_penalty=1.5,
                            eos_token_id=lm.eos_token_ids, pad_token_id=lm.pad_token_id)
    ref = [t for t in gen[0, len(ids):].tolist() if t not in lm.eos_token_ids]
    assert out.final_text == lm.tokenizer.decode(ref, skip_special_tokens=True)
    plain = run_batch(lm, topo, [s], MethodSettings("baseline", decode=DecodeSettings(12, True)))[0]
    assert plain.final_text != out.final_text  # the penalty really changes this case


def _questions(n):
    return [SampleInput(f"s{i}", q, "Answer with a number.", seed=100 + i)
            for i, q in enumerate(["What is 2+2?", "A much longer question about trains, speeds and the time "
                                   "at which the second train catches the first one?", "Name a colour.",
                                   "Why?"][:n])]


@pytest.mark.parametrize("method", ["baseline", "latent_mas"])
def test_sampling_is_reproducible_per_seed_and_independent_of_batch(tiny_lm, method):
    """The paper's settings (T=0.6, top-p 0.95) plus top-k: a sample's text depends on its own seed only. Catches
    one generator shared by the batch (or uniforms drawn as one [B] vector from it), which makes a sample's text
    depend on its neighbours and on its position, and a sampler that ignores the seed."""
    from latentmas.engine.alignment import compute_alignment
    from latentmas.engine.latent import LatentMapper

    lm = tiny_lm("qwen2")
    al = compute_alignment(lm.model)
    mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
    topo = load_topology("single" if method == "baseline" else "sequential")
    settings = MethodSettings(method, latent_steps=2, agent_max_new_tokens=4,
                              decode=DecodeSettings(10, greedy=False, top_k=50, **PAPER))
    samples = _questions(4)
    together = [o.final_text for o in run_batch(lm, topo, samples, settings, mapper)]
    again = [o.final_text for o in run_batch(lm, topo, samples, settings, mapper)]
    alone = [run_batch(lm, topo, [s], settings, mapper)[0].final_text for s in samples]
    shuffled = [o.final_text for o in run_batch(lm, topo, samples[::-1], settings, mapper)][::-1]
    assert together == again == alone == shuffled
    reseeded = [SampleInput(s.sample_id, s.question, s.answer_instruction, s.seed + 7) for s in samples]
    assert [o.final_text for o in run_batch(lm, topo, reseeded, settings, mapper)] != together
    greedy = MethodSettings(method, latent_steps=2, agent_max_new_tokens=4, decode=DecodeSettings(10, True))
    assert [o.final_text for o in run_batch(lm, topo, samples, greedy, mapper)] != together  # it really samples


def test_invalid_settings_fail_with_one_message_naming_them():
    """Catches a silent fallback (e.g. top_p=0 sampling the argmax, temperature 0 dividing by zero)."""
    with pytest.raises(ValueError, match=r"top_p=0.*top_k=-1"):
        DecodeSettings(8, greedy=True, top_p=0.0, top_k=-1)
    with pytest.raises(ValueError, match="temperature=0"):
        DecodeSettings(8, greedy=False, temperature=0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_finite_rows_equals_isfinite_all(dtype):
    """The per-step finite check (max/min of each row) against isfinite().all(): catches a NaN that does not
    propagate into the row's max, -inf missed (only the max looked at), and a huge finite value flagged."""
    from latentmas.engine.decoding import finite_rows

    x = torch.randn(6, 1000, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[1, 17], x[2, 999], x[3, 0], x[5, 3] = float("nan"), float("inf"), float("-inf"), torch.finfo(dtype).max
    x[4, 5], x[4, 6] = float("inf"), float("-inf")
    assert finite_rows(x).tolist() == torch.isfinite(x).all(dim=-1).tolist() == [True, False, False, False, False,
                                                                                 True]


def test_greedy_pick_equals_float32_argmax_with_ties():
    """bf16 logits tie often; the first maximal id must win, as float32 argmax (the reference pick) has it."""
    from latentmas.engine.decoding import greedy_pick

    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(8, 5000, generator=g).to(torch.bfloat16)
        top = x.float().max(dim=-1).values.to(torch.bfloat16)
        x.scatter_(1, torch.randint(0, 5000, (8, 3), generator=g), top[:, None].expand(8, 3))  # ties at the top
        assert torch.equal(greedy_pick(x), pick_tokens(x, DecodeSettings(4), None))


@pytest.mark.parametrize("greedy", [True, False])
def test_non_finite_logits_stop_their_row_only(monkeypatch, greedy):
    """A row whose logits turn NaN or -inf at step 2 stops there with nonfinite_at = 2 and keeps the tokens it had;
    the other row decodes on. Catches the finite check missing -inf or NaN, a done row emitting, and the step
    recorded off by one; greedy takes the fast pick, sampling the float32 path."""
    import latentmas.engine.decoding as dec

    vocab, calls = 16, []

    def fake_extend(model, batch, mask, *, input_ids, **kw):  # logits after each fed token, [B, V]
        calls.append(input_ids[:, 0].tolist())
        logits = torch.full((input_ids.shape[0], vocab), -50.0)
        logits[:, 3] = 50.0
        if len(calls) == 2:  # the logits the loop checks at step 2
            logits[1, 7], logits[2, 0] = float("nan"), float("-inf")
        return logits.to(torch.bfloat16)

    monkeypatch.setattr(dec, "extend", fake_extend)
    first = fake_extend(None, None, None, input_ids=torch.zeros(3, 1, dtype=torch.long))
    calls.clear()
    settings = DecodeSettings(5, greedy=greedy, temperature=1.0, top_p=1.0)
    gens = None if greedy else [torch.Generator().manual_seed(i) for i in range(3)]
    with dec.retire_mode("off"):
        res = dec.decode(None, None, first, settings, eos_ids=[15], pad_id=0, agent="a", generators=gens)
    assert res.nonfinite_at == [None, 2, 2]
    assert res.tokens == [[3] * 5, [3, 3], [3, 3]]
    assert calls[2:] == [[3, 0, 0]] * 2  # stopped rows are fed the pad id
