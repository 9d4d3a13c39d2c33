"""Reserved cache columns (engine/reserved_cache.py) against transformers' DynamicLayer.

Each test catches a way an in-place cache can go wrong and still run: an append written at the wrong offset or the
old columns not copied on growth (contents differ from torch.cat's), an earlier view changed by a later append,
a replacement of keys/values by transformers' own methods ignored, unbounded spare memory, the per-row prompt
prefill silently switched off for the new layer type, or model outputs that drift from the plain cache's.
"""
from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from latentmas.engine import kv
from latentmas.engine.reserved_cache import CHUNK, ReservedLayer, reserve_columns


def _appends(seed: int = 0):
    """A prompt, then single columns across two growths, then another multi-column segment: [B, H, n, D] pairs."""
    g = torch.Generator().manual_seed(seed)
    sizes = [37] + [1] * (CHUNK + 5) + [CHUNK + 3] + [1] * 4
    return [(torch.randn(3, 2, n, 5, generator=g), torch.randn(3, 2, n, 4, generator=g)) for n in sizes]


def test_reserved_layer_holds_what_dynamic_layer_holds():
    plain, reserved = DynamicLayer(), ReservedLayer()
    grown = 0
    for k, v in _appends():
        pk, pv = plain.update(k, v)
        rk, rv = reserved.update(k, v)
        assert torch.equal(rk, pk) and torch.equal(rv, pv)  # value heads may be narrower (D 4 vs 5): kept apart
        capacity = reserved._buffers[0].shape[2]
        assert rk.shape[2] <= capacity <= rk.shape[2] + CHUNK  # bounded spare columns
        grown += rk.data_ptr() != reserved._buffers[0].data_ptr()
    assert reserved.get_seq_length() == plain.get_seq_length() == 37 + CHUNK + 5 + CHUNK + 3 + 4
    assert grown == 0  # keys are always a view of the buffer's start


def test_single_column_appends_do_not_reallocate():
    layer = ReservedLayer()
    k, v = torch.randn(2, 1, 10, 3), torch.randn(2, 1, 10, 3)
    layer.update(k, v)
    buffer = layer._buffers[0]
    for _ in range(CHUNK):
        layer.update(torch.randn(2, 1, 1, 3), torch.randn(2, 1, 1, 3))
    assert layer._buffers[0] is buffer  # CHUNK more columns fit without a copy
    layer.update(torch.randn(2, 1, 1, 3), torch.randn(2, 1, 1, 3))
    assert layer._buffers[0] is not buffer and layer.get_seq_length() == 10 + CHUNK + 1


def test_views_taken_earlier_do_not_change():
    layer = ReservedLayer()
    appends = _appends(1)
    layer.update(*appends[0])
    early_k, early_v = layer.keys, layer.values
    before = (early_k.clone(), early_v.clone())
    for k, v in appends[1:]:
        layer.update(k, v)
    assert torch.equal(early_k, before[0]) and torch.equal(early_v, before[1])


@pytest.mark.parametrize("operation", ["crop", "select", "assign"])
def test_replaced_keys_are_adopted(operation):
    """transformers' crop / batch_select_indices (or anyone) replacing keys/values: the next append continues on
    the replacement, exactly as a DynamicLayer would."""
    plain, reserved = DynamicLayer(), ReservedLayer()
    appends = _appends(2)[:20]
    for k, v in appends[:10]:
        plain.update(k, v)
        reserved.update(k, v)
    held = reserved.keys  # a view from before the replacement: appends after it must not write into it
    held_copy = held.clone()
    for layer in (plain, reserved):
        if operation == "crop":
            layer.crop(-4)
        elif operation == "select":
            layer.batch_select_indices(torch.tensor([2, 0, 1]))
        else:
            layer.keys, layer.values = layer.keys[:, :, 3:].clone(), layer.values[:, :, 3:].clone()
    for k, v in appends[10:]:
        pk, pv = plain.update(k, v)
        rk, rv = reserved.update(k, v)
    assert torch.equal(rk, pk) and torch.equal(rv, pv)
    assert torch.equal(held, held_copy)


def test_reset_forgets_the_buffers():
    layer = ReservedLayer()
    layer.update(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2))
    layer.reset()
    k, v = torch.randn(2, 1, 3, 2), torch.randn(2, 1, 3, 2)
    keys, values = layer.update(k, v)
    assert torch.equal(keys, k) and torch.equal(values, v)


def test_sequence_batches_reserve_and_keep_per_row_prefill(tiny_lm):
    """Batches get reserved layers, and prompt segments are still read one row at a time on the CPU (a type check by
    class name would silently turn that off)."""
    lm = tiny_lm("qwen2")
    batch = kv.SequenceBatch.empty(lm.model, 2, lm.device)
    assert batch.cache.layers and all(type(layer) is ReservedLayer for layer in batch.cache.layers)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert kv._rows_apart(batch, mask) == [2, 3]
    kept = kv.keep_columns(lm.model, _filled(lm, batch), [0, 2])
    assert all(type(layer) is ReservedLayer for layer in kept.cache.layers)


def test_gemma_sliding_layers_keep_their_own_storage(tiny_lm):
    lm = tiny_lm("gemma3")
    cache = kv.SequenceBatch.empty(lm.model, 1, lm.device).cache
    sliding = [getattr(layer, "is_sliding", False) for layer in cache.layers]
    assert any(sliding)
    assert all((type(layer) is ReservedLayer) == (not s) for layer, s in zip(cache.layers, sliding))


def _filled(lm, batch):
    ids, mask = kv.left_pad([[5, 6, 7], [8, 9, 10]], lm.pad_token_id, lm.device)
    kv.extend(lm.model, batch, mask, input_ids=ids, want="hidden")
    return batch


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_run_batch_equals_plain_dynamic_cache(tiny_lm, monkeypatch, arch):
    """Every method through run_batch: texts and latent norms bit-identical to plain DynamicLayers (the reserved
    layer changes where columns are stored, never their values)."""
    from latentmas.engine.alignment import compute_alignment
    from latentmas.engine.decoding import DecodeSettings
    from latentmas.engine.latent import LatentMapper
    from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
    from latentmas.engine.topology import load_topology

    from latentmas.bench.measure import without_eos

    lm = without_eos(tiny_lm(arch))  # every decode runs past CHUNK columns, so the buffers grow mid-decode
    al = compute_alignment(lm.model)
    mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
    samples = [SampleInput(f"s{i}", q, "Answer.", i) for i, q in enumerate(["2+2?", "A longer question here?", "Hi"])]
    batch_size = 1 if arch == "gemma3" else 3  # sliding windows refuse padded batches past the window
    outs = {}
    for reserved in (False, True):
        if not reserved:
            monkeypatch.setattr(kv, "reserve_columns", lambda cache: cache)
        else:
            monkeypatch.setattr(kv, "reserve_columns", reserve_columns)
        for method, topo in (("baseline", "single"), ("text_mas", "sequential"), ("latent_mas", "sequential")):
            settings = MethodSettings(method, latent_steps=3, decode=DecodeSettings(max_new_tokens=CHUNK + 20))
            got = []
            for i in range(0, len(samples), batch_size):
                got += run_batch(lm, load_topology(topo), samples[i:i + batch_size], settings, mapper)
            outs[reserved, method] = [(o.final_text, [a["latent"] for a in o.agents]) for o in got]
    for method in ("baseline", "text_mas", "latent_mas"):
        assert outs[True, method] == outs[False, method], method
