"""Decode steps with fixed tensor shapes, so ``torch.compile`` (and CUDA graphs on a GPU) can replay one graph.

Why: the reference loop (:func:`latentmas.engine.decoding.decode` with ``graph="eager"``) appends one column to a
``DynamicCache`` and to the attention mask per token, so every step has new shapes and launches every kernel from
Python. Here, once per decode, the agent's cache (prompt + inherited latent memory, pad columns included) is
copied into a preallocated ``StaticCache`` of ``length + max_new_tokens`` columns rounded up to :data:`BUCKET`
(so batches of similar length reuse one compiled graph), the attention mask is one fixed ``[B, C]`` tensor whose
next column is switched on in place, and each step feeds ``input_ids [B, 1]`` and ``position_ids [B, 1]`` only.

Columns keep their meaning (cache slot) and position ids stay per-sample real-token counts, exactly as in
:mod:`latentmas.engine.kv`; unused columns are masked. The numbers equal the eager loop's up to kernel reduction
order (the attention sums over more, masked, columns), which is why ``eager`` stays the exact reference and this
path is an opt-in (``decode_graph: static | compiled``), checked against it in tests/test_static_decode.py.
"""
from __future__ import annotations

import torch

from latentmas.engine.kv import SequenceBatch, _cache_kwarg, _has_sliding_layers, segment_appended, segment_starting

DECODE_GRAPHS = ("eager", "static", "compiled")
BUCKET = 256  # static cache columns are a multiple of this: one compiled graph per (batch size, bucket)


def static_capable(batch: SequenceBatch) -> bool:
    """Sliding-window layers count the window in columns (kv.check_sliding_window), and layers without their own
    keys (shared-KV designs) have nothing to copy: keep those on the eager path."""
    return not _has_sliding_layers(batch.cache) and all(layer.keys is not None for layer in batch.cache.layers)


def compiled_forward(model):
    """The model's forward compiled once per model object: CUDA graphs on a GPU (``reduce-overhead``), inductor's
    default elsewhere. ``dynamic=False``: every (batch, bucket) shape gets its own specialised graph."""
    fn = getattr(model, "_latentmas_compiled_forward", None)
    if fn is None:
        from latentmas.contracts import COMPILED_CONFLICT
        from latentmas.engine.packed_linear import PackedLinear

        if any(isinstance(m, PackedLinear) for m in model.modules()):  # packed by a load without decode_graph
            raise ValueError(f"this model's linears are packed: {COMPILED_CONFLICT}")
        # a job meets a few buckets x (batch size, last partial batch) shapes; dynamo's default limit of 8 graphs
        # per function would silently fall back to eager past it
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        mode = "reduce-overhead" if model.device.type == "cuda" else "default"
        fn = torch.compile(model.forward, mode=mode, dynamic=False)
        model._latentmas_compiled_forward = fn
    return fn


class StaticDecodeStep:
    """Callable ``(feed [B, 1] long, active [B] bool) -> logits [B, V]`` over a preallocated cache.

    Built from the batch right after the agent's prompt was read; the batch's own cache is not extended further
    (after the decode nobody reads it), but ``next_position`` is, and the step hook fires per token as in eager."""

    def __init__(self, model, batch: SequenceBatch, steps: int, compiled: bool, agent: str = ""):
        from transformers import StaticCache

        self.batch, self.agent = batch, agent
        length = batch.length
        columns = -(-(length + steps) // BUCKET) * BUCKET
        self.cache = StaticCache(config=model.config, max_cache_len=columns)
        for i, layer in enumerate(batch.cache.layers):  # one copy of what the agent inherits: [B, H, length, D]
            self.cache.update(layer.keys, layer.values, i)
        self.mask = torch.zeros(batch.batch_size, columns, dtype=torch.long, device=batch.attention_mask.device)
        self.mask[:, :length] = batch.attention_mask  # [B, C]: columns >= length switched on as tokens arrive
        self.column = length
        self.forward = compiled_forward(model) if compiled else model.forward
        self.cache_kw = _cache_kwarg(model)

    def __call__(self, feed: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        if self.column >= self.mask.shape[1]:
            raise RuntimeError("static decode ran past its preallocated cache")
        segment_starting()
        on = active.long()
        self.mask[:, self.column] = on
        positions = self.batch.next_position[:, None]  # [B, 1]: a pad step reuses the position, as in eager
        with torch.no_grad():
            out = self.forward(input_ids=feed, attention_mask=self.mask, position_ids=positions,
                               use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        self.column += 1
        self.batch.next_position = self.batch.next_position + on
        segment_appended(self.agent, "text")
        return out.logits[:, -1, :].clone()  # [B, V]: a CUDA-graph output buffer is overwritten by the next replay
