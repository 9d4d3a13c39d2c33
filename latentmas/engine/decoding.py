"""Batched text decoding on top of a :class:`~latentmas.engine.kv.SequenceBatch`.

Why not ``model.generate``: our caches carry pad slots in the middle (from left-padded later segments) and explicit
per-sample positions; generate would re-derive positions from the mask. This loop feeds one token per step with
the same explicit bookkeeping as every other segment and computes logits for the last position only.

Hot path (one step): the forward, then device-side bookkeeping (finite check, pick, EOS, token buffer) and one
host synchronisation (``done.sum()``; a step that retires rows adds one more); there is no Python loop over the
batch. Generated ids stay in a device buffer and are copied to the host once, at the end.

Finished rows are retired (:data:`RETIRE`): once a sample has stopped, the eager loop drops its row from the batch
so that later forwards compute only the rows still writing. On a CPU a step's cost grows with its rows, and a batch
decodes until its longest answer ends, so retiring saves the finished rows' share of every later step (numbers:
docs/ENGINE.md, "Decoding"). A row's numbers do not depend on its neighbours (explicit positions and masks), so
results are unchanged up to kernel reduction order; with oneDNN-packed linears they were identical in our tests.

Sampling honours the same knobs as transformers' ``generate`` and in its order: repetition penalty (a logits
processor, so it applies to greedy decoding too, as in transformers), then temperature, top-k, top-p, min-p. Each
sample owns a ``torch.Generator``; its uniforms for the whole decode are drawn from that generator up front and the
token is picked by one batched inverse-CDF over the filtered, sorted distribution. A sample's text therefore depends
only on its own seed and logits, never on its batch neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from latentmas.engine.kv import SequenceBatch, extend, keep_rows, rows_removable
from latentmas.engine.static_decode import DECODE_GRAPHS, StaticDecodeStep, static_capable
from latentmas.engine.switches import Switch

# Whether the eager decode retires finished rows: ``on``, ``off`` (every row stays in every forward until the whole
# batch is done: the behaviour before retiring existed), ``auto`` (default): on a CPU, where a step's cost grows with
# its rows (measured), off elsewhere (a GPU step is expected to cost about the same at 1 and 8 rows; unmeasured).
# Caches whose rows transformers cannot select (quantized, linear attention: kv.rows_removable) are never retired.
RETIRE = Switch("retire", ("auto", "on", "off"), on_cpu="on", elsewhere="off")
RETIRE_MODES = RETIRE.modes
retire_mode = RETIRE.mode  # ``with retire_mode("off"):`` every eager decode inside keeps all its rows


def _retiring(device: torch.device) -> bool:
    return RETIRE.resolve(device) == "on"


@dataclass(frozen=True)
class DecodeSettings:
    """``top_k`` 0, ``min_p`` 0 and ``repetition_penalty`` 1 switch that filter off (transformers' conventions)."""

    max_new_tokens: int
    greedy: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        bad = []
        if self.max_new_tokens < 0:
            bad.append(f"max_new_tokens={self.max_new_tokens} (need >= 0)")
        if not self.greedy and not self.temperature > 0:
            bad.append(f"temperature={self.temperature} (need > 0 when sampling)")
        if not 0 < self.top_p <= 1:
            bad.append(f"top_p={self.top_p} (need 0 < top_p <= 1)")
        if self.top_k < 0:
            bad.append(f"top_k={self.top_k} (need >= 0; 0 = off)")
        if not 0 <= self.min_p <= 1:
            bad.append(f"min_p={self.min_p} (need 0 <= min_p <= 1)")
        if not self.repetition_penalty > 0:
            bad.append(f"repetition_penalty={self.repetition_penalty} (need > 0; 1 = off)")
        if bad:
            raise ValueError("invalid decode settings: " + "; ".join(bad))


@dataclass
class DecodeResult:
    tokens: list[list[int]]
    nonfinite_at: list[int | None]  # first step whose logits were non-finite, per sample


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor on a presence mask: seen tokens' logits are divided by the
    penalty when positive and multiplied when negative. logits [B, V] float32, seen [B, V] bool."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def filtered_distribution(logits: torch.Tensor, settings: DecodeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature, top-k, top-p, min-p, in transformers' order. Returns (probs, ids), both [B, K], sorted by
    descending probability; filtered-out entries have probability 0 (not renormalised: the sampler scales by the
    row total). K = top_k when top-k is on, else the vocabulary size."""
    scaled = logits / settings.temperature
    vocab = scaled.shape[-1]
    if 0 < settings.top_k < vocab:
        vals, ids = scaled.topk(settings.top_k, dim=-1)  # sorted, descending
    else:
        vals, ids = scaled.sort(dim=-1, descending=True, stable=True)
    probs = torch.softmax(vals, dim=-1)  # = the full softmax renormalised over the kept top-k set
    keep = torch.ones_like(probs, dtype=torch.bool)
    if settings.top_p < 1.0:
        # transformers removes a token when the mass of tokens at most as likely is <= 1 - top_p, i.e. keeps it when
        # the mass strictly more likely than it is < top_p; the most likely token is always kept.
        keep = probs.cumsum(dim=-1) - probs < settings.top_p
    if settings.min_p > 0.0:
        # relative to the top token: unaffected by renormalising after top-k/top-p
        keep &= probs >= settings.min_p * probs[:, :1]
    return probs * keep, ids


def sample_from(probs: torch.Tensor, ids: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Batched inverse-CDF: for each row the first sorted entry whose cumulative mass exceeds u·total.
    probs, ids [B, K]; uniforms [B] in [0, 1). Returns token ids [B]."""
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1])[:, None]
    pos = torch.searchsorted(cdf, target, right=True)
    last_kept = (probs > 0).sum(dim=-1, keepdim=True).clamp_min(1) - 1  # guards u·total rounding up to total
    return ids.gather(1, torch.minimum(pos, last_kept)).squeeze(1)


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """[B] bool: whether every entry of row b of ``x`` [B, N] is finite. The same answer as
    ``isfinite(x).all(-1)`` (a NaN propagates into the row's max, an infinity is the max or the min) at a seventh
    of its cost on a bf16 [8, 151936] logits block on the CPU (0.2 vs 1.3 ms, measured): it runs every step."""
    return torch.isfinite(x.amax(dim=-1)) & torch.isfinite(x.amin(dim=-1))


def greedy_pick(logits: torch.Tensor) -> torch.Tensor:
    """argmax of each row [B, V] -> [B], in the logits' own dtype: widening to float32 is exact and keeps the
    order, and ``max`` returns the first maximal index as ``argmax`` does, so the ids equal ``pick_tokens``'
    greedy ones without the float32 copy (bf16 [8, 151936] on the CPU: 0.36 ms here; copy + argmax 0.4 ms,
    and bf16 ``argmax`` itself 2 ms)."""
    return logits.max(dim=-1).indices


def pick_tokens(logits: torch.Tensor, settings: DecodeSettings, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Greedy = argmax in float32 (bit-identical to before the batched sampler); else the filtered draw."""
    logits = logits.to(torch.float32)
    if settings.greedy:
        return logits.argmax(dim=-1)
    probs, ids = filtered_distribution(logits, settings)
    return sample_from(probs, ids, uniforms)


def draw_uniforms(generators: list[torch.Generator], steps: int, device: torch.device) -> torch.Tensor:
    """[B, steps] uniforms, row b drawn from sample b's own generator only (once per decode, not per step)."""
    return torch.stack([torch.rand(steps, generator=g, device=g.device, dtype=torch.float64).to(device)
                        for g in generators])


def _presence(ids: torch.Tensor | None, mask: torch.Tensor | None, bsz: int, vocab: int,
              device: torch.device) -> torch.Tensor:
    """[B, V] bool: which token ids occur in each sample's context (pad slots excluded by the mask)."""
    counts = torch.zeros(bsz, vocab, dtype=torch.int32, device=device)
    if ids is not None:
        real = torch.ones_like(ids, dtype=torch.int32) if mask is None else mask.to(torch.int32)
        counts.scatter_add_(1, ids.to(device).clamp(0, vocab - 1), real.to(device))
    return counts > 0


def decode(model, batch: SequenceBatch, first_logits: torch.Tensor, settings: DecodeSettings, eos_ids: list[int],
           pad_id: int, agent: str, generators: list[torch.Generator] | None = None,
           active: torch.Tensor | None = None, context_ids: torch.Tensor | None = None,
           context_mask: torch.Tensor | None = None, graph: str = "eager") -> DecodeResult:
    """Decode up to ``max_new_tokens`` per sample. ``context_ids``/``context_mask`` ([B, S]): the ids the repetition
    penalty counts besides the generated ones — the agent's own (templated) prompt, as ``generate`` would see it;
    positions inherited through a latent cache have no token ids and are not counted. ``graph``: ``eager`` (the
    exact reference: one growing cache), ``static`` or ``compiled`` (fixed shapes, :mod:`.static_decode`).
    ``batch`` is consumed: the eager loop extends it and may drop finished rows from it (:data:`RETIRE`)."""
    if graph not in DECODE_GRAPHS:
        raise ValueError(f"unknown decode graph {graph!r}; use one of {', '.join(DECODE_GRAPHS)}")
    bsz, vocab = first_logits.shape
    device = first_logits.device
    steps = settings.max_new_tokens
    done = torch.zeros(bsz, dtype=torch.bool, device=device) if active is None else ~active.to(device)
    out = torch.full((bsz, max(steps, 1)), pad_id, dtype=torch.long, device=device)  # [B, steps] generated ids
    n_out = torch.zeros(bsz, dtype=torch.long, device=device)
    nonfinite = torch.full((bsz,), -1, dtype=torch.long, device=device)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    uniforms = None if settings.greedy else draw_uniforms(generators, steps, device)
    penalise = settings.repetition_penalty != 1.0
    seen = _presence(context_ids, context_mask, bsz, vocab, device) if penalise else None
    fixed = (StaticDecodeStep(model, batch, steps, graph == "compiled", agent)
             if graph != "eager" and steps > 1 and static_capable(batch) else None)
    retire = fixed is None and _retiring(device) and rows_removable(batch)
    live: torch.Tensor | None = None  # [L]: the caller's row ids still in ``batch`` once rows were retired
    logits = first_logits  # [B, V]
    for step in range(steps):
        finite = finite_rows(logits)
        nonfinite = torch.where(~finite & ~done & (nonfinite < 0), step, nonfinite)
        done = done | ~finite
        if settings.greedy and not penalise:  # a non-finite row is done: whatever it picks is never emitted
            nxt = greedy_pick(logits)
        else:
            clean = torch.where(finite[:, None], logits, torch.zeros_like(logits)).to(torch.float32)
            if penalise:
                clean = apply_repetition_penalty(clean, seen, settings.repetition_penalty)
            nxt = pick_tokens(clean, settings, None if uniforms is None else uniforms[:, step])
        emitted = ~done & ~torch.isin(nxt, eos)
        out[:, step] = nxt
        n_out += emitted.long()
        done = done | ~emitted
        if penalise:
            seen[torch.arange(bsz, device=device), nxt] |= emitted
        if step == steps - 1:
            break
        finished = int(done.sum())  # the step's one host sync
        if finished == bsz:
            break
        feed = torch.where(done, torch.full_like(nxt, pad_id), nxt)[:, None]  # [B, 1]
        if fixed is not None:
            logits = fixed(feed, ~done)
            continue
        if retire and bsz - finished < batch.batch_size:  # rows finished since the batch was last trimmed
            live = _retire_finished(batch, done, live)
        if live is None:
            logits = extend(model, batch, (~done).long()[:, None], input_ids=feed, want="logits", agent=agent,
                            kind="text")
        else:  # every row left in the batch is still writing
            part = extend(model, batch, torch.ones_like(feed[live]), input_ids=feed[live], want="logits",
                          agent=agent, kind="text")  # [L, V]
            logits = part.new_zeros(bsz, part.shape[1])  # [B, V]: retired rows are done; their logits go unread
            logits[live] = part
    # tokens of a sample are a prefix of its row: once done it never emits again
    lengths, rows, first_bad = n_out.tolist(), out.tolist(), nonfinite.tolist()
    return DecodeResult(tokens=[r[:n] for r, n in zip(rows, lengths)],
                        nonfinite_at=[None if s < 0 else s for s in first_bad])


def _retire_finished(batch: SequenceBatch, done: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
    """Drop the rows of ``batch`` whose sample is ``done`` ([B] bool, the caller's rows); ``live`` ([L] or None for
    all rows): which caller rows ``batch`` holds now. Returns the caller row ids it holds afterwards."""
    running = (~done).nonzero().squeeze(1)  # [L'] increasing caller row ids
    keep_rows(batch, running if live is None else torch.searchsorted(live, running))
    return running
