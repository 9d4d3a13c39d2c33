"""What the final latent_mas agent inherits, and the controls that change it (docs/CONTROLS.md).

The latent_mas loop in :mod:`latentmas.engine.methods` calls three things from here:

* :func:`handoff_truncate` -- memory scope ``handoff`` (the original code): after every non-final agent the shared
  cache is cut to what the policy keeps (``previous``: that agent's prompt + latents; ``latent_only``: that agent's
  latents only), so later agents already think on the truncated memory. Scope ``final`` (ours) applies the policy only
  when building the final agent's view.
* :func:`final_view` -- the batch the final agent decodes on: the policy's columns (scope ``final``), then a memory
  budget (keep a share of the handed-over positions by a named rule), or nothing at all (``transfer=False``, the
  no-transfer control). It also measures what was handed over: positions and bytes of kept cache per sample.
* :func:`run_single_matched` -- the single agent with the team's latent budget: the final agent's prompt thinks
  :func:`matched_latent_budget` steps on its own, then reads its prompt again on top of that and answers.

Budgets select *per sample* (each sample has its own real positions and scores): columns no sample keeps are removed
from the cache, and positions only some samples keep are masked out for the others, so a sample's kept set -- and its
numbers -- do not depend on its batch neighbours.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from latentmas.contracts import KEEP_RULES, MEMORY_POLICIES, MEMORY_SCOPES
from latentmas.engine.decoding import decode
from latentmas.engine.kv import SequenceBatch, extend, keep_columns, left_pad, memory_columns
from latentmas.engine.latent import latent_rollout


@dataclass(frozen=True)
class MemoryControl:
    """The knobs of a latent_mas cell that change what is handed over (defaults = the paper's method)."""

    transfer: bool = True  # False: no-transfer control, the final agent starts from an empty cache
    scope: str = "final"  # MEMORY_SCOPES
    keep_fraction: float = 1.0  # share of the handed-over positions the final agent keeps
    keep_rule: str = "random"  # KEEP_RULES


def check_memory_settings(policy: str, ctl: MemoryControl) -> None:
    if policy not in MEMORY_POLICIES:
        raise ValueError(f"unknown memory policy {policy!r}; use one of {', '.join(MEMORY_POLICIES)}")
    if ctl.scope not in MEMORY_SCOPES:
        raise ValueError(f"unknown memory scope {ctl.scope!r}; use one of {', '.join(MEMORY_SCOPES)}")
    if ctl.keep_rule not in KEEP_RULES:
        raise ValueError(f"unknown keep rule {ctl.keep_rule!r}; use one of {', '.join(KEEP_RULES)}")
    if not 0.0 <= ctl.keep_fraction <= 1.0:
        raise ValueError(f"keep fraction must be in [0, 1], got {ctl.keep_fraction}")


def matched_latent_budget(topo, latent_steps: int) -> int:
    """The team's total latent steps: every non-final agent thinks ``latent_steps``, the final agent none."""
    return latent_steps * sum(1 for a in topo.agents if not a.final)


def handoff_truncate(model, shared: SequenceBatch, policy: str, agent: str) -> SequenceBatch:
    """Scope ``handoff``: cut the cache to what ``agent`` hands on under ``policy`` (``all`` hands on everything)."""
    if policy == "all":
        return shared
    segs = [s for s in shared.segments if s.agent == agent and (policy == "previous" or s.kind == "latent")]
    return keep_columns(model, shared, [c for s in segs for c in range(s.start, s.end)])


def bytes_per_position(cache) -> int:
    """Bytes one sample's position occupies in the cache: keys + values of every layer."""
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is not None and t.numel():
                total += t.shape[1] * t.shape[3] * t.element_size()
    return total


def _n_keep(fraction: float, n: int) -> int:
    return min(n, int(math.floor(fraction * n + 0.5)))  # round half up: 0.6 of 5 positions keeps 3


def _knn_scores(lm, view: SequenceBatch, prompts: list[list[int]]) -> torch.Tensor:
    """[B, T]: cosine of each handed-over position's middle-layer key with the receiving prompt's mean key there.

    kNN-LatentMAS compares the memory with the receiving agent's prompt at a middle layer; we put both in the same
    (key) space, the model-agnostic way: the prompt is read once on its own cache and its middle-layer keys averaged
    over its real positions (all heads concatenated).
    """
    layer = len(view.cache.layers) // 2
    probe = SequenceBatch.empty(lm.model, len(prompts), lm.device)
    ids, mask = left_pad(prompts, lm.pad_token_id, lm.device)
    extend(lm.model, probe, mask, input_ids=ids, want="hidden")
    pk = probe.cache.layers[layer].keys.float()  # [B, H, S, hd]
    w = mask.float()[:, None, :, None]
    query = ((pk * w).sum(dim=2) / w.sum(dim=2)).flatten(1)  # [B, H*hd]
    keys = view.cache.layers[layer].keys.float()  # [B, H, T, hd]
    keys = keys.permute(0, 2, 1, 3).flatten(2)  # [B, T, H*hd]
    return torch.nn.functional.cosine_similarity(keys, query[:, None, :], dim=-1)


def _keep_mask(lm, view: SequenceBatch, ctl: MemoryControl, prompts, seeds: list[int]) -> torch.Tensor:
    """[B, T] bool: the positions each sample keeps (exactly round(fraction x its real handed-over positions))."""
    real = view.attention_mask.bool()
    keep = torch.zeros_like(real)
    scores = _knn_scores(lm, view, prompts) if ctl.keep_rule.startswith("knn") else None
    for b in range(view.batch_size):
        cols = torch.nonzero(real[b]).flatten()
        k = _n_keep(ctl.keep_fraction, len(cols))
        if ctl.keep_rule == "random":
            gen = torch.Generator(device="cpu").manual_seed(int(seeds[b]) % (2**63 - 1))
            chosen = cols[torch.randperm(len(cols), generator=gen)[:k].to(cols.device)]
        elif ctl.keep_rule == "recent":
            chosen = cols[len(cols) - k:]
        else:
            s = scores[b, cols]
            chosen = cols[torch.argsort(s, descending=ctl.keep_rule == "knn_top", stable=True)[:k]]
        keep[b, chosen] = True
    return keep


def final_view(lm, shared: SequenceBatch, policy: str, ctl: MemoryControl, previous_agent: str | None,
               prompts: list[list[int]], seeds: list[int]) -> tuple[SequenceBatch, list[dict]]:
    """The batch the final agent decodes on, and per sample what it inherited: positions, bytes, handed over."""
    bsz = shared.batch_size
    if not ctl.transfer:
        return SequenceBatch.empty(lm.model, bsz, lm.device), [
            {"handed_over": int(n), "kept": 0, "kept_bytes": 0} for n in shared.real_tokens().tolist()]
    view = shared
    cols = memory_columns(shared, policy, previous_agent) if ctl.scope == "final" else None
    if cols is not None:
        view = keep_columns(lm.model, view, cols)
    handed = view.real_tokens().tolist()
    if ctl.keep_fraction < 1.0 and view.length:
        keep = _keep_mask(lm, view, ctl, prompts, seeds)
        union = torch.nonzero(keep.any(dim=0)).flatten().tolist()
        masked = keep.long()[:, union]
        view = keep_columns(lm.model, view, union)
        view.attention_mask = view.attention_mask * masked
    per_pos = bytes_per_position(view.cache) if view.length else 0
    kept = view.real_tokens().tolist()
    return view, [{"handed_over": int(h), "kept": int(k), "kept_bytes": int(k) * per_pos}
                  for h, k in zip(handed, kept)]


def run_single_matched(lm, prompts: list[list[int]], budget: int, mapper, settings, name: str, gens,
                       alive: torch.Tensor):
    """One agent: read its prompt, think ``budget`` latent steps, then read its prompt again and answer.

    The second reading mirrors the final latent_mas agent, which reads its prompt on top of the memory (here: its own
    prompt and thoughts) and decodes from a real token; decoding straight from the last latent state makes a real
    model stop at once (Qwen2.5-Coder-0.5B emitted end-of-turn as its first token). Returns (decode result, rollout
    trace, wall seconds per sample).
    """
    t0 = time.perf_counter()
    batch = SequenceBatch.empty(lm.model, len(prompts), lm.device)
    ids, mask = left_pad(prompts, lm.pad_token_id, lm.device)
    hidden = extend(lm.model, batch, mask, input_ids=ids, want="hidden", agent=name, kind="prompt")
    _, trace = latent_rollout(lm.model, batch, hidden, budget, mapper, name, alive)
    logits = extend(lm.model, batch, mask, input_ids=ids, want="logits", agent=name, kind="prompt")
    res = decode(lm.model, batch, logits, settings, lm.eos_token_ids, lm.pad_token_id, name, gens, active=alive,
                 graph=lm.decode_graph)
    return res, trace, (time.perf_counter() - t0) / len(prompts)
