"""Attention for single-query steps on the CPU: a grouped matmul instead of PyTorch's CPU flash kernel.

Why: every decode step and every latent step attends with one query per sample. PyTorch's CPU SDPA
(``_scaled_dot_product_flash_attention_for_cpu``) is built for long query blocks; with one query in bfloat16 it
was 40% of a latent_mas batch on the demo model (profiled: 5.2 ms per call at ~800 cached columns, batch 8, where
two small matmuls take 1.4 ms), and transformers first copies the key/value heads for grouped-query attention.
Here, for ``q_len == 1`` on a CPU, each key/value head attends for its group of query heads without copies:
``softmax(q·Kᵀ·scale + mask) · V`` with the scores in float32. Prompts (many queries) and every other device keep
transformers' SDPA path unchanged (``sdpa_attention_forward``), and so does the mask: the same ``sdpa_mask``.

Registered with transformers' ``AttentionInterface`` as :data:`NAME`; ``load_model`` selects it where SDPA would
be used (docs/ENGINE.md, "Single-query attention").
"""
from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "latentmas_sdpa"


def single_query_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention signature: query [B, H, q, D], key/value [B, Hkv, T, D], mask bool [B, 1, q, T]
    (True = attend) or None; returns ([B, q, H, D], None)."""
    bsz, heads, q_len, dim = query.shape
    special = ((dropout and module.training) or kwargs.get("output_attentions")
               or any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "cache")))
    if q_len != 1 or query.device.type != "cpu" or special:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kv_heads, cols = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = dim ** -0.5 if scaling is None else scaling
    q = query.reshape(bsz, kv_heads, group, dim)  # [B, Hkv, g, D]: the query heads that share one kv head
    scores = _scores(q, key).float() * scale  # [B, Hkv, g, T]
    if attention_mask is not None:
        allowed = attention_mask[:, :, -1, -cols:]  # [B, 1, T]
        if allowed.dtype == torch.bool:
            scores = scores.masked_fill(~allowed[:, :, None, :], float("-inf"))
        else:  # an additive float mask
            scores = scores + allowed[:, :, None, :].float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # [B, Hkv, g, T]
    out = torch.matmul(probs, value)  # [B, Hkv, g, D]
    return out.reshape(bsz, 1, heads, value.shape[-1]), None  # value heads may be narrower than query heads


def _scores(q: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """q·Kᵀ for q [B, Hkv, g, D] and key [B, Hkv, T, D] (often a view into a longer reserved cache); [B, Hkv, g, T].

    Why two orders: in bfloat16/float16 PyTorch's CPU batched matmul is slow on a transposed key view (measured on
    a Zen 4 CPU, batch 8, 2048 columns: 0.68 ms per call, 0.15 ms for (K·qᵀ)ᵀ, bit-identical results), so half
    precision computes K·qᵀ and reads it transposed; float32 (MKL, which takes the strides as they are) is faster
    the usual way round (0.27 vs 0.45 ms) and keeps it."""
    if key.dtype in (torch.bfloat16, torch.float16):
        return torch.matmul(key, q.transpose(-1, -2)).transpose(-1, -2)
    return torch.matmul(q, key.transpose(-1, -2))


def register() -> str:
    """Register :data:`NAME` (attention and its mask) with transformers once; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, single_query_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
