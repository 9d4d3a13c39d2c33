"""Batched text decoding on top of a :class:`~latentmas.engine.kv.SequenceBatch`.

Why not ``model.generate``: our caches carry pad slots in the middle (from left-padded later segments) and explicit
per-sample positions; generate would re-derive positions from the mask. This loop feeds one token per step with
the same explicit bookkeeping as every other segment, computes logits for the last position only, and draws samples
with one ``torch.Generator`` per sample, so a sample's text does not depend on its batch neighbours in sampling mode
either. Finished samples are fed masked pad tokens until the whole batch is done.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from latentmas.engine.kv import SequenceBatch, extend


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int
    greedy: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    # fields only (helper "perf" implements them in the sampler; this branch only passes them through)
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off


@dataclass
class DecodeResult:
    tokens: list[list[int]]
    nonfinite_at: list[int | None]  # first step whose logits were non-finite, per sample


def _pick(logits: torch.Tensor, settings: DecodeSettings, generators: list[torch.Generator] | None) -> torch.Tensor:
    logits = logits.to(torch.float32)
    if settings.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / max(settings.temperature, 1e-5), dim=-1)
    if settings.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(dim=-1) - sorted_p < settings.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    picks = [torch.multinomial(probs[b], 1, generator=generators[b]) for b in range(probs.shape[0])]
    return torch.cat(picks)


def decode(model, batch: SequenceBatch, first_logits: torch.Tensor, settings: DecodeSettings, eos_ids: list[int],
           pad_id: int, agent: str, generators: list[torch.Generator] | None = None,
           active: torch.Tensor | None = None) -> DecodeResult:
    bsz = first_logits.shape[0]
    device = first_logits.device
    done = torch.zeros(bsz, dtype=torch.bool, device=device) if active is None else ~active.clone()
    tokens: list[list[int]] = [[] for _ in range(bsz)]
    nonfinite: list[int | None] = [None] * bsz
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    logits = first_logits
    for step in range(settings.max_new_tokens):
        finite = torch.isfinite(logits).all(dim=-1)
        for b in torch.nonzero(~finite & ~done).flatten().tolist():
            nonfinite[b] = step
        done |= ~finite
        nxt = _pick(torch.where(finite[:, None], logits, torch.zeros_like(logits)), settings, generators)
        is_eos = torch.isin(nxt, eos)
        for b in torch.nonzero(~done & ~is_eos).flatten().tolist():
            tokens[b].append(int(nxt[b]))
        done |= is_eos
        if bool(done.all()) or step == settings.max_new_tokens - 1:
            break
        feed = torch.where(done, torch.full_like(nxt, pad_id), nxt)[:, None]
        logits = extend(model, batch, (~done).long()[:, None], input_ids=feed, want="logits", agent=agent, kind="text")
    return DecodeResult(tokens=tokens, nonfinite_at=nonfinite)
