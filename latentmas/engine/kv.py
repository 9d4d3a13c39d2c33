"""A batch of sequences sharing one padded KV cache, extended segment by segment.

Why this exists: the original implementation right-padded prompts and read the hidden state at the last *column*,
which for shorter prompts is a PAD position. Here every segment (an agent's prompt, a latent step, a decoded token)
is **left-padded within the segment**, so the last column of a segment is always a real token for every sample, and:

* ``attention_mask`` (``[B, T]``, 1 = real slot) covers every cache slot ever written, including pad slots in the
  middle of a sequence (from padding later segments), which attention then ignores;
* position ids are explicit: each sample counts only its own real tokens (``next_position``), so a sample's RoPE
  phases — and therefore its numbers — do not depend on what else is in the batch;
* ``segments`` remembers which columns belong to which agent and kind (prompt / latent / text), which is what the
  working-memory variants select on.

Caches are used only through the transformers Cache API (``DynamicCache``, ``layer.keys``/``layer.values``,
``update``); nothing indexes caches as tuples. Plain layers are swapped for ``reserved_cache.ReservedLayer``:
the same numbers, but a one-column append writes in place instead of copying the whole cache.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from latentmas.engine.reserved_cache import PLAIN_LAYERS, reserve_columns
from latentmas.engine.switches import Switch

# Called after every segment appended by :func:`extend` with (agent, kind): one call per prompt, latent step or
# generated token. Set by ``run_batch(progress=...)`` so a person can watch a long batch; None (default) costs nothing.
STEP_HOOK: contextvars.ContextVar[Callable[[str, str], None] | None] = contextvars.ContextVar("STEP_HOOK", default=None)
# Called with no arguments just before every segment's forward (here and in the static decode step), so that with
# STEP_HOOK after it a profiler brackets each forward (the bench's PhaseClock). None (default) costs nothing.
SEGMENT_START: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("SEGMENT_START",
                                                                                           default=None)


def segment_starting() -> None:
    hook = SEGMENT_START.get()
    if hook is not None:
        hook()


def segment_appended(agent: str, kind: str) -> None:
    """Tell :data:`STEP_HOOK` (if set) that one segment of ``kind`` by ``agent`` was appended."""
    hook = STEP_HOOK.get()
    if hook is not None:
        hook(agent, kind)


# How a padded multi-token segment (an agent's prompt) is computed. ``padded``: one forward over ``[B, S]``, pad
# slots included (one large kernel per layer, what a GPU wants). ``per_row``: one forward per sample over its own
# real tokens, written into the same cache layout: on a CPU the FLOPs are the cost and pads are ~28-32% of the demo's
# prompt slots at batch 8 (1.03-1.11x end to end, lower peak memory; docs/ENGINE.md, "Prompt prefill").
# ``auto`` (default): per_row on a CPU, padded elsewhere.
PREFILL = Switch("prefill", ("auto", "padded", "per_row"), on_cpu="per_row", elsewhere="padded")
PREFILL_MODES = PREFILL.modes
prefill_mode = PREFILL.mode  # ``with prefill_mode("padded"):`` every prompt segment inside is computed that way


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed ``past_key_values=`` to ``cache=``; support both spellings."""
    return _cache_kwarg_of(type(model))


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(cls) -> str:  # once per class: this sits on the per-token hot path
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class Segment:
    agent: str
    kind: str  # "prompt" | "latent" | "text"
    start: int
    end: int


@dataclass
class SequenceBatch:
    cache: object
    attention_mask: torch.Tensor  # [B, T] long
    next_position: torch.Tensor  # [B] long: the RoPE position of each sample's next real token
    segments: list[Segment] = field(default_factory=list)

    @classmethod
    def empty(cls, model, batch_size: int, device: torch.device) -> "SequenceBatch":
        from transformers import DynamicCache

        return cls(
            cache=reserve_columns(DynamicCache(config=model.config)),
            attention_mask=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            next_position=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]

    def real_tokens(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one segment: returns ids ``[B, S]`` and mask ``[B, S]``."""
    width = max(len(s) for s in seqs)
    if width == 0 or any(len(s) == 0 for s in seqs):
        raise ValueError("every sample needs at least one token in a segment")
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def extend(
    model,
    batch: SequenceBatch,
    mask: torch.Tensor,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    want: str = "hidden",
    agent: str = "",
    kind: str = "prompt",
    position_shift: int = 0,
) -> torch.Tensor:
    """Append one segment to the batch's cache; return the last column's hidden state or logits.

    ``want="hidden"`` runs only the decoder stack (``model.base_model``): a latent step needs the final-norm hidden
    state at one position, not vocabulary logits. ``want="logits"`` runs the LM head on the last position only.
    ``position_shift`` exists solely so ``check-model`` can prove it detects a broken hand-off.
    """
    segment_starting()
    offset = (mask.cumsum(dim=1) - 1).clamp(min=0)
    position_ids = batch.next_position[:, None] + offset + position_shift
    full_mask = torch.cat([batch.attention_mask, mask], dim=1)
    check_sliding_window(model, batch, full_mask)
    target = model.base_model if want == "hidden" else model
    inputs = {"input_ids": input_ids} if input_ids is not None else {"inputs_embeds": inputs_embeds}
    with torch.no_grad():
        rows = _rows_apart(batch, mask)
        if rows is not None:
            last = _forward_rows_apart(target, batch, mask, rows, position_ids, inputs, want)
        else:
            last = _forward(target, batch.cache, full_mask, position_ids, inputs, want)
    start = batch.length
    batch.attention_mask = full_mask
    batch.next_position = batch.next_position + mask.sum(dim=1)
    batch.segments.append(Segment(agent, kind, start, batch.length))
    segment_appended(agent, kind)
    return last


def _forward(target, cache, full_mask: torch.Tensor, position_ids: torch.Tensor, inputs: dict,
             want: str) -> torch.Tensor:
    """One forward of a segment on top of ``cache`` (which it extends); the last column's hidden state / logits."""
    kwargs = {"attention_mask": full_mask, "position_ids": position_ids, _cache_kwarg(target): cache,
              "use_cache": True, **inputs}
    if want == "logits":
        kwargs["logits_to_keep"] = 1
    out = target(**kwargs)
    return out.last_hidden_state[:, -1, :] if want == "hidden" else out.logits[:, -1, :]


def _rows_apart(batch: SequenceBatch, mask: torch.Tensor) -> list[int] | None:
    """Each row's real token count if this segment runs one forward per sample (see :data:`PREFILL`), else None.
    Only multi-token segments with padding qualify (a latent step or a decoded token is one real column per row:
    nothing to save); a row without any token in the segment keeps the padded forward."""
    bsz, width = mask.shape
    if bsz < 2 or width < 2:
        return None
    if PREFILL.resolve(mask.device) != "per_row" or not all(type(layer) in PLAIN_LAYERS
                                                           for layer in batch.cache.layers):
        return None  # sliding-window, linear-attention or quantized layers keep the padded forward
    real = mask.sum(dim=1).tolist()  # [B]: one host sync per prompt segment
    return real if min(real) > 0 and min(real) < width else None  # a token in every row, and padding to skip


def _forward_rows_apart(target, batch: SequenceBatch, mask: torch.Tensor, real: list[int],
                        position_ids: torch.Tensor, inputs: dict, want: str) -> torch.Tensor:
    """The segment computed one sample at a time over its real tokens only, written into the batch cache in the
    same left-padded layout the padded forward produces (pad slots hold zeros: finite, and masked like before).

    Keys carry the RoPE phase of their explicit position, and attention reads a set of masked slots, so a row's
    numbers equal the padded forward's up to kernel reduction order. Assumes :func:`left_pad`'s layout: each row's
    real tokens are the last ones of the segment (``real[i]`` of them)."""
    from transformers import DynamicCache

    bsz, width = mask.shape
    past = batch.length
    name, seg = next(iter(inputs.items()))
    chunks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    lasts = []
    for i, n in enumerate(real):
        row = DynamicCache(config=target.config)
        for li, layer in enumerate(batch.cache.layers):
            if layer.keys is not None and layer.keys.numel():
                row.update(layer.keys[i:i + 1], layer.values[i:i + 1], li)
        row_mask = torch.cat([batch.attention_mask[i:i + 1], mask[i:i + 1, width - n:]], dim=1)  # [1, past + n]
        lasts.append(_forward(target, row, row_mask, position_ids[i:i + 1, width - n:],
                              {name: seg[i:i + 1, width - n:]}, want))
        for li, layer in enumerate(row.layers):
            if layer.keys is None:
                continue
            k, v = layer.keys[:, :, past:, :], layer.values[:, :, past:, :]  # [1, H, n, D]
            if li not in chunks:
                shape = (bsz, k.shape[1], width, k.shape[3])
                chunks[li] = (k.new_zeros(shape), v.new_zeros(shape))
            chunks[li][0][i, :, width - n:, :] = k[0]
            chunks[li][1][i, :, width - n:, :] = v[0]
    for li in sorted(chunks):
        batch.cache.update(*chunks[li], li)
    return torch.cat(lasts, dim=0)


def rows_removable(batch: SequenceBatch) -> bool:
    """Whether :func:`keep_rows` can drop rows of this batch's cache: every layer holds plain ``[B, H, T, D]`` keys
    and values (full or sliding-window attention). transformers' ``batch_select_indices`` does not trim quantized
    storage or linear-attention states, so such caches keep every row."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    return all(type(layer) in PLAIN_LAYERS or type(layer) is DynamicSlidingWindowLayer for layer in batch.cache.layers)


def keep_rows(batch: SequenceBatch, rows: torch.Tensor) -> None:
    """Drop every row of ``batch`` but ``rows`` ([L] long, increasing), in place: cache (transformers'
    ``batch_select_indices``, which copies the kept rows), mask and positions. Segments are batch-aligned: unchanged.
    A row left alone keeps the pad columns its former neighbours caused (the sliding-window check still sees them)."""
    if not rows_removable(batch):
        raise ValueError("keep_rows: this cache has layers whose rows transformers cannot select")
    batch.cache.batch_select_indices(rows)
    batch.attention_mask = batch.attention_mask[rows]
    batch.next_position = batch.next_position[rows]


def _has_sliding_layers(cache) -> bool:
    return any(getattr(layer, "is_sliding", False) for layer in cache.layers)


class SlidingWindowBatchError(ValueError):
    """A batch of a sliding-window model would make a sample's result depend on its batch neighbours."""


def check_sliding_window(model, batch: SequenceBatch, full_mask: torch.Tensor) -> None:
    """Refuse a batch whose pad columns would fall inside a sliding window.

    Why: transformers' sliding-window layers (Gemma-3 >= 1B, Mistral-style configs) count the window in cache
    *columns*, pads included, while our batches carry pad columns in the middle of sequences (left-padded later
    segments). Once a sequence is longer than the window, a sample sees fewer of its own tokens the more padding its
    neighbours caused, so its numbers depend on the batch. Exactness would need a per-sample window in real tokens,
    which the attention kernels do not offer; batch size 1 has no pad columns and is exact. (A row left alone by
    retiring its neighbours still carries their pad columns, so the check looks at the mask, not the batch size.)
    """
    if not _has_sliding_layers(batch.cache):
        return
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    if window is None or full_mask.shape[1] <= int(window) or bool(full_mask.all()):
        return
    raise SlidingWindowBatchError(
        f"this model has sliding-window attention (window {window} positions) and a batch of "
        f"{batch.batch_size} sequences has grown to {full_mask.shape[1]} columns with padding: the window would "
        f"count pad columns, so results would depend on the batch. Run it with batch size 1 "
        f"(`--batch-size 1`, config models.<name>.batch_size: 1).")


def keep_columns(model, batch: SequenceBatch, columns: list[int]) -> SequenceBatch:
    """A new batch whose cache holds only ``columns`` (same for every sample: segments are batch-aligned).

    Kept keys keep the RoPE phases they were written with, and ``next_position`` keeps counting from where each
    sample was: dropping memory does not renumber what remains (documented in docs/ENGINE.md).
    """
    from transformers import DynamicCache

    if _has_sliding_layers(batch.cache):
        raise NotImplementedError("selecting cache positions is not supported for sliding-window layers; "
                                  "use memory: all for this model")
    device = batch.attention_mask.device
    idx = torch.tensor(columns, dtype=torch.long, device=device)
    new_cache = reserve_columns(DynamicCache(config=model.config))
    for layer_idx, layer in enumerate(batch.cache.layers):
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        new_cache.update(layer.keys.index_select(2, idx), layer.values.index_select(2, idx), layer_idx)
    remap = {c: i for i, c in enumerate(columns)}
    segments = []
    for seg in batch.segments:
        kept = [remap[c] for c in range(seg.start, seg.end) if c in remap]
        if kept:
            segments.append(Segment(seg.agent, seg.kind, kept[0], kept[-1] + 1))
    return SequenceBatch(new_cache, batch.attention_mask.index_select(1, idx), batch.next_position.clone(), segments)


def memory_columns(batch: SequenceBatch, policy: str, previous_agent: str | None) -> list[int] | None:
    """Columns an agent inherits under a working-memory policy (None = everything, nothing to drop).

    * ``all``: every predecessor's prompt and latent positions (the paper's default);
    * ``previous``: only the immediately preceding agent's prompt + latent positions;
    * ``latent_only``: only latent positions of all predecessors (their prompts are dropped).
    """
    if policy == "all":
        return None
    if policy == "previous":
        segs = [s for s in batch.segments if s.agent == previous_agent]
    elif policy == "latent_only":
        segs = [s for s in batch.segments if s.kind == "latent"]
    else:
        raise ValueError(f"unknown memory policy {policy!r}; use all, previous or latent_only")
    return [c for s in segs for c in range(s.start, s.end)]
