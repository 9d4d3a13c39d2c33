"""Single-query attention (engine/attention.py) against PyTorch's SDPA, and its use by load_model on the CPU.

Catches: query heads grouped onto the wrong key/value head, the padding mask ignored or read from the wrong
column, the wrong scale, an additive mask treated as boolean, and load_model not selecting it (or selecting it
for prompts, where SDPA stays)."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from latentmas.engine.attention import NAME, single_query_attention


def _reference(q, k, v, mask, scale):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # head h reads kv head h // group
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale).transpose(1, 2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_matches_sdpa_with_grouped_heads_and_padding(dtype, tol):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 8, 1, 16, generator=g).to(dtype)  # 8 query heads
    k, v = (torch.randn(3, 2, 37, 16, generator=g).to(dtype) for _ in range(2))  # 2 kv heads: groups of 4
    mask = torch.rand(3, 1, 1, 37, generator=g) > 0.3
    mask[:, :, :, -1] = True  # the step's own column
    module = types.SimpleNamespace(training=False)
    for m in (mask, None):
        got, _ = single_query_attention(module, q, k, v, m, scaling=0.31)
        assert got.shape == (3, 1, 8, 16)
        assert torch.allclose(got.float(), _reference(q, k, v, m, 0.31), atol=tol, rtol=tol)
    additive = torch.where(mask, 0.0, float("-inf")).to(dtype)
    got, _ = single_query_attention(module, q, k, v, additive, scaling=0.31)
    assert torch.allclose(got.float(), _reference(q, k, v, mask, 0.31), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
def test_keys_as_a_view_into_a_longer_cache(dtype, tol):
    """Keys and values as the reserved cache hands them over: the first T columns of a longer buffer (strided, not
    contiguous). Half precision takes the K·qᵀ order (_scores); catches it read back untransposed or with the query
    groups and columns swapped, and a buffer column past T leaking into the scores (the tail holds NaN here)."""
    g = torch.Generator().manual_seed(1)
    buf_k, buf_v = (torch.randn(2, 2, 50, 16, generator=g).to(dtype) for _ in range(2))
    buf_k[:, :, 37:], buf_v[:, :, 37:] = float("nan"), float("nan")
    k, v = buf_k[:, :, :37], buf_v[:, :, :37]  # [B, Hkv, T, D] views with the buffer's strides
    q = torch.randn(2, 6, 1, 16, generator=g).to(dtype)  # groups of 3 query heads
    mask = torch.ones(2, 1, 1, 37, dtype=torch.bool)
    mask[0, :, :, :5] = False  # a left-padded row
    got, _ = single_query_attention(types.SimpleNamespace(training=False), q, k, v, mask, scaling=0.25)
    assert torch.allclose(got.float(), _reference(q, k.contiguous(), v.contiguous(), mask, 0.25), atol=tol, rtol=tol)


def test_value_heads_narrower_than_query_heads():
    """DeepSeek-style heads (value width != query width): the output takes the value width."""
    q, k = torch.randn(2, 4, 1, 24), torch.randn(2, 2, 9, 24)
    v = torch.randn(2, 2, 9, 16)
    got, _ = single_query_attention(types.SimpleNamespace(training=False), q, k, v, None, scaling=0.2)
    assert got.shape == (2, 1, 4, 16)
    assert torch.allclose(got, _reference(q, k, v, None, 0.2), atol=1e-5)


def test_prompts_keep_sdpa():
    """Many queries (a prompt) go to transformers' SDPA unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = types.SimpleNamespace(training=False, num_key_value_groups=4, is_causal=True)
    q = torch.randn(2, 8, 5, 16)
    k, v = torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    got, _ = single_query_attention(module, q, k, v, None, scaling=0.25)
    want, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.25)
    assert torch.equal(got, want)


def test_load_model_uses_it_on_cpu_and_logits_match_sdpa(tiny_model_dir):
    """The tiny qwen2 (2 query heads per kv head) decoding on a padded batch: the same logits as with SDPA."""
    from latentmas.engine.kv import SequenceBatch, extend, left_pad
    from latentmas.engine.models import load_model

    lm = load_model(str(tiny_model_dir("qwen2")), dtype="float32", device="cpu")
    assert lm.model.config._attn_implementation == NAME
    got = {}
    for impl in (NAME, "sdpa"):
        lm.model.set_attn_implementation(impl)
        batch = SequenceBatch.empty(lm.model, 3, lm.device)
        ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], lm.pad_token_id, lm.device)
        extend(lm.model, batch, mask, input_ids=ids, want="logits")
        rows = []
        for t in range(4):
            rows.append(extend(lm.model, batch, torch.tensor([[1], [t % 2], [1]]),
                               input_ids=torch.tensor([[20 + t]] * 3), want="logits"))
        got[impl] = torch.stack(rows)
    lm.model.set_attn_implementation(NAME)
    assert torch.allclose(got[NAME], got["sdpa"], atol=1e-5, rtol=1e-4)
