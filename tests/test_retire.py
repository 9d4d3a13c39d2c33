"""Retiring finished rows from the eager decode (engine/decoding.py, ``RETIRE``) against decoding every row to the end.

Each test catches a way retiring can go wrong and still produce text: the cache trimmed but not the mask or the
positions (shapes break or phases shift), caller rows mapped to the wrong batch rows after a second retirement
(searchsorted vs raw ids: a neighbour's tokens), logits written back to the wrong rows, rows never actually dropped
(no saving), or a sample that stopped early and was still fed.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from latentmas.engine.alignment import compute_alignment
from latentmas.engine.decoding import DecodeSettings, decode, retire_mode
from latentmas.engine.kv import SequenceBatch, extend, left_pad
from latentmas.engine.latent import LatentMapper
from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
from latentmas.engine.topology import load_topology

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18, 19, 20], [21, 22, 23, 24, 25]]
STEPS = 14


def _decode(lm, eos: list[int], mode: str, active: torch.Tensor | None = None):
    """Decode PROMPTS (left-padded, 5 rows) under retire ``mode``; returns (tokens, rows seen by each forward)."""
    rows_seen: list[int] = []
    hook = lm.model.register_forward_pre_hook(lambda mod, args, kw: rows_seen.append(kw["input_ids"].shape[0]),
                                              with_kwargs=True)
    try:
        batch = SequenceBatch.empty(lm.model, len(PROMPTS), lm.device)
        ids, mask = left_pad(PROMPTS, lm.pad_token_id, lm.device)
        extend(lm.model, batch, mask, input_ids=ids, want="hidden")  # a shared earlier segment, as agents meet it
        logits = extend(lm.model, batch, mask, input_ids=ids, want="logits")
        rows_seen.clear()
        with retire_mode(mode):
            res = decode(lm.model, batch, logits, DecodeSettings(STEPS, True), eos, lm.pad_token_id, "a",
                         active=active)
    finally:
        hook.remove()
    return res.tokens, rows_seen


def _staggered_eos(lm) -> int:
    """A token whose first appearance differs between rows in the full decode, so rows finish at different steps
    (at least two early finishers at different steps, and one row that runs to the limit)."""
    full, _ = _decode(lm, [], "off")
    best, best_key = None, None
    for t in {tok for row in full for tok in row[:STEPS - 2]}:
        firsts = [row.index(t) if t in row else STEPS for row in full]
        early = sorted({f for f in firsts if f < STEPS - 1})
        key = (len(early) >= 2 and STEPS in firsts, len(early))
        if best_key is None or key > best_key:
            best, best_key = t, key
    assert best_key[0], "no token staggers the rows' ends on this tiny model"
    return best


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # tiny gemma3 repeats one token per row: see the next test
def test_retiring_rows_changes_no_token_and_shrinks_the_forwards(tiny_lm, arch):
    lm = tiny_lm(arch)
    eos = _staggered_eos(lm)
    kept, rows_off = _decode(lm, [eos], "off")
    retired, rows_on = _decode(lm, [eos], "on")
    assert retired == kept
    lengths = [len(t) for t in kept]
    assert len(set(lengths)) >= 3 and max(lengths) == STEPS  # rows end at different steps; one runs to the limit
    assert set(rows_off) == {len(PROMPTS)}
    # each forward computes only the rows still writing: one per row whose answer is longer than the step
    assert rows_on == [sum(n > s for n in lengths) for s in range(len(rows_on))]
    assert len(set(rows_on)) >= 3  # retired more than once: the row map went through a second trim
    assert _decode(lm, [eos], "auto")[1] == rows_on  # auto on a CPU = on


def test_auto_retires_on_a_cpu_only_and_never_where_rows_cannot_be_selected(tiny_lm):
    from transformers.cache_utils import QuantizedLayer

    from latentmas.engine.decoding import _retiring
    from latentmas.engine.kv import rows_removable

    with retire_mode("auto"):
        assert _retiring(torch.device("cpu")) and not _retiring(torch.device("cuda"))
    with retire_mode("on"):
        assert _retiring(torch.device("cuda"))
    batch = SequenceBatch.empty(tiny_lm("qwen2").model, 2, torch.device("cpu"))
    assert rows_removable(batch)
    quantized = type("Quantized", (QuantizedLayer,), {"_quantize": None, "_dequantize": None})
    batch.cache.layers[0] = object.__new__(quantized)  # storage batch_select_indices would not trim
    assert not rows_removable(batch)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_sampling_with_retiring_keeps_each_sample_on_its_own_stream(tiny_lm, penalty):
    """Sampling (per-sample generators, uniforms drawn up front) and the repetition penalty's seen-token mask stay
    indexed by the caller's rows after rows are retired: the same tokens as without retiring."""
    lm = tiny_lm("qwen2")
    eos = _staggered_eos(lm)
    settings = DecodeSettings(STEPS, greedy=False, temperature=0.8, top_p=0.9, repetition_penalty=penalty)
    runs = {}
    for mode in ("off", "on"):
        batch = SequenceBatch.empty(lm.model, len(PROMPTS), lm.device)
        ids, mask = left_pad(PROMPTS, lm.pad_token_id, lm.device)
        logits = extend(lm.model, batch, mask, input_ids=ids, want="logits")
        gens = [torch.Generator().manual_seed(100 + i) for i in range(len(PROMPTS))]
        with retire_mode(mode):
            runs[mode] = decode(lm.model, batch, logits, settings, [eos], lm.pad_token_id, "a", gens,
                                context_ids=ids, context_mask=mask).tokens
    assert runs["on"] == runs["off"]
    assert len({len(t) for t in runs["off"]}) >= 2  # some rows did stop early


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])  # gemma3: sliding-window cache layers are trimmed too
def test_rows_dead_from_the_start_are_never_computed(tiny_lm, arch):
    lm = tiny_lm(arch)
    alive = torch.tensor([True, False, True, False, True])
    kept, _ = _decode(lm, [], "off", active=alive)
    retired, rows_on = _decode(lm, [], "on", active=alive)
    assert retired == kept and [len(t) for t in retired] == [STEPS, 0, STEPS, 0, STEPS]
    assert rows_on == [3] * (STEPS - 1)


def _with_eos(lm, eos: list[int]):
    pad = lm.pad_token_id

    class _Eos(type(lm)):
        eos_token_ids = property(lambda self: eos)
        pad_token_id = property(lambda self: pad)

    return _Eos(**{f.name: getattr(lm, f.name) for f in dataclasses.fields(lm)})


def _stagger(rows: list[list[int]]) -> int:
    """A token that ends the rows at the most different steps (first appearance per row)."""
    def spread(t):
        return len({row.index(t) if t in row else len(row) for row in rows})
    return max(sorted({t for row in rows for t in row}), key=spread)


def test_run_batch_records_equal_with_and_without_retiring(tiny_lm, monkeypatch):
    """Every method through run_batch, EOS set so that the final answers end at different steps: the same texts and
    token counts with and without retiring."""
    from latentmas.engine import methods

    plain = tiny_lm("qwen2")
    al = compute_alignment(plain.model)
    mapper = LatentMapper(al.target_norm, al.w_a, plain.device, plain.dtype)
    samples = [SampleInput(f"s{i}", q, "Answer.", i) for i, q in enumerate(["2+2?", "A longer question?", "Hi", "Why"])]
    decoded: list[list[list[int]]] = []
    real_decode = methods.decode

    def spy(*a, **k):
        res = real_decode(*a, **k)
        decoded.append(res.tokens)
        return res

    monkeypatch.setattr(methods, "decode", spy)
    for method, topo in (("baseline", "single"), ("text_mas", "sequential"), ("latent_mas", "sequential")):
        settings = MethodSettings(method, latent_steps=2, decode=DecodeSettings(12, True))
        with retire_mode("off"):
            run_batch(_with_eos(plain, []), load_topology(topo), samples, settings, mapper)
        lm = _with_eos(plain, [_stagger(decoded[-1])])  # the final agent's rows, decoded without a stop id
        runs = {}
        for mode in ("off", "on"):
            with retire_mode(mode):
                runs[mode] = run_batch(lm, load_topology(topo), samples, settings, mapper)
        assert [o.final_text for o in runs["on"]] == [o.final_text for o in runs["off"]], method
        counts = [[a["generated_tokens"] for a in o.agents] for o in runs["off"]]
        assert [[a["generated_tokens"] for a in o.agents] for o in runs["on"]] == counts, method
        assert len({c[-1] for c in counts}) > 2, method  # the final answers did end at different steps


def test_unknown_retire_mode_is_refused():
    with pytest.raises(ValueError, match="unknown retire mode 'sometimes'"):
        with retire_mode("sometimes"):
            pass
