"""The latent_mas hand-off as input embeddings, for a backend that can only prefill (vLLM).

In the HF path the final agent continues on the shared cache. Every cache column was written by one forward step
whose input was an embedding: a prompt token's embedding-layer output or a mapped latent vector. A causal model's
K/V at a column are a function of the embeddings of that column and of every real column before it, at their RoPE
positions. So one prefill over the sequence "embeddings of every real column the final agent attends to, in cache
order, then the final agent's own prompt embeddings" rebuilds the handed-over K/V up to floating-point reduction
order — provided the positions agree. Our caches count positions per sample over real columns only, so with the
``all`` memory policy they are 0..n-1, exactly what a prefill numbers them. Policies that drop columns break this
(the kept K/V were computed attending to the dropped context, at their old positions): refused by the vLLM backend.

:class:`InputRecorder` records those embeddings from the HF run itself (a forward pre-hook on the decoder stack), so
the prompt embeddings are the HF backend's own inputs, not a re-derivation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from latentmas.engine.kv import PREFILL, SequenceBatch, extend, keep_columns, left_pad, memory_columns
from latentmas.engine.methods import SampleOutput, _synced_clock, _think_latently
from latentmas.engine.models import encode, render_chat


class InputRecorder:
    """Records, per forward call of the decoder stack, the input embeddings ``[B, S, d]`` (model dtype).

    ``input_ids`` are embedded with the model's own input-embedding module (which applies any scale, e.g. Gemma's
    √d), ``inputs_embeds`` are taken as given: the vectors the model saw, column by column in cache order.
    """

    def __init__(self, lm):
        self.lm = lm
        self.columns: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None
        self._handle = None
        self._prefill = None

    def __enter__(self) -> "InputRecorder":
        self._handle = self.lm.decoder.register_forward_pre_hook(self._hook, with_kwargs=True)
        self._prefill = PREFILL.set("padded")  # one call per segment with all B rows, what the table assumes
        return self

    def __exit__(self, *exc) -> None:
        PREFILL.reset(self._prefill)
        self._handle.remove()

    def _hook(self, module, args, kwargs):
        emb = kwargs.get("inputs_embeds")
        if emb is None:
            with torch.no_grad():
                emb = self.lm.model.get_input_embeddings()(kwargs["input_ids"])
        self.columns.append(emb.detach())
        self.mask = kwargs.get("attention_mask")  # [B, T]: the cache's mask including this segment

    def table(self) -> torch.Tensor:
        """``[B, T, d]``: the input embedding of every cache column written so far."""
        return torch.cat(self.columns, dim=1)


def attended_embeddings(table: torch.Tensor, batch: SequenceBatch, policy: str,
                        previous_agent: str | None) -> list[torch.Tensor]:
    """Per sample ``[n_i, d]``: embeddings of the real columns the next agent attends to, in cache order.

    Pad columns (masked out of attention in HF) are dropped, so the sequence is exactly the sample's own.
    """
    if table.shape[1] != batch.length:
        raise RuntimeError(f"recorded {table.shape[1]} input columns for a cache of {batch.length}")
    cols = memory_columns(batch, policy, previous_agent)
    idx = torch.arange(batch.length, device=table.device) if cols is None else torch.tensor(cols, dtype=torch.long,
                                                                                             device=table.device)
    real = batch.attention_mask.index_select(1, idx).bool()
    return [table[i].index_select(0, idx[real[i]]) for i in range(table.shape[0])]


def prompt_embeds(lm, memory: torch.Tensor, final_prompt: list[int]) -> torch.Tensor:
    """``[n + p, d]`` on CPU, model dtype: the handed-over memory followed by the final agent's prompt embeddings."""
    ids = torch.tensor(final_prompt, dtype=torch.long, device=lm.device)
    with torch.no_grad():
        own = lm.model.get_input_embeddings()(ids)
    return torch.cat([memory.to(own.device), own], dim=0).to("cpu")


@dataclass
class PrefixOutput(SampleOutput):
    """A sample after latent_mas's non-final agents: their records, and the memory the final agent inherits."""

    memory: torch.Tensor | None = None  # [n, d], model dtype, CPU


def _run_prefix(lm, topo, samples, settings, mapper):
    """latent_mas's non-final agents for one batch, computed as :func:`methods.run_batch` computes them.

    Same prompts, same left-padded segments, same latent rollout and failure rules. Returns the per-sample outputs,
    the shared cache and the recorder of every column's input embedding.
    """
    bsz = len(samples)
    outs = [PrefixOutput() for _ in samples]
    alive = torch.ones(bsz, dtype=torch.bool, device=lm.device)
    shared = SequenceBatch.empty(lm.model, bsz, lm.device)
    with InputRecorder(lm) as rec:
        for agent in topo.agents[:-1]:
            t0 = _synced_clock(lm.device)
            prompts = [encode(lm.tokenizer, render_chat(
                lm.tokenizer, topo.render(agent, s.question, s.answer_instruction, "latent", {}), settings.think))
                for s in samples]
            shared = _think_latently(lm, shared, agent.name, prompts, None, settings, mapper, None, alive, outs,
                                     None, t0)
    return outs, shared, rec


def _previous_agent(topo) -> str | None:
    return topo.agents[-2].name if len(topo.agents) > 1 else None


def latent_prefix(lm, topo, samples, settings, mapper) -> list[PrefixOutput]:
    """The non-final agents of one batch, with the memory the final agent attends to under ``settings.memory``."""
    outs, shared, rec = _run_prefix(lm, topo, samples, settings, mapper)
    if shared.length:
        memory = attended_embeddings(rec.table(), shared, settings.memory, _previous_agent(topo))
    else:
        memory = [torch.zeros(0, lm.model.get_input_embeddings().embedding_dim, dtype=lm.dtype)] * len(samples)
    for o, m in zip(outs, memory):
        o.memory = m.to("cpu")
    return outs


def final_prompts(lm, topo, samples, settings) -> list[list[int]]:
    agent = topo.agents[-1]
    return [encode(lm.tokenizer, render_chat(
        lm.tokenizer, topo.render(agent, s.question, s.answer_instruction, "latent", {}), settings.think))
        for s in samples]


def handoff_first_logits(lm, topo, samples, settings, mapper) -> torch.Tensor:
    """``[B, V]`` float32: the HF reference's logits of the final agent's first token (on the handed-over cache)."""
    outs, shared, _ = _run_prefix(lm, topo, samples, settings, mapper)
    batch = shared
    cols = memory_columns(shared, settings.memory, _previous_agent(topo)) if shared.length else None
    if cols is not None:
        batch = keep_columns(lm.model, shared, cols)
    ids, mask = left_pad(final_prompts(lm, topo, samples, settings), lm.pad_token_id, lm.device)
    logits = extend(lm.model, batch, mask, input_ids=ids, want="logits", agent=topo.agents[-1].name, kind="prompt")
    return logits.to(torch.float32)
