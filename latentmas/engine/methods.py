"""The three methods over one batch of samples: ``baseline``, ``text_mas``, ``latent_mas``.

* ``baseline``: the ``single`` topology, one agent answers.
* ``text_mas``: every agent decodes text; an agent's prompt inlines the texts of the agents it ``sees``.
  Each agent starts from an empty cache (that is what passing text means).
* ``latent_mas``: non-final agents read their prompt on top of the shared cache and think ``latent_steps`` steps in
  latent space; the cache (all layers; prompt + latent positions of every agent, subject to the ``memory`` policy) is
  the working memory the next agent continues on. The final agent decodes the answer on top of it.

``latent_steps: 0`` in latent_mas means: agents write their prompts into the shared memory and think zero steps, so
the final agent still attends to every predecessor's prompt (the original code silently dropped all predecessors'
memory here; we do not — see docs/ENGINE.md).

Controls (docs/CONTROLS.md) change only what the final latent_mas agent inherits (``MethodSettings.control``: no
transfer, memory budget, memory scope; :mod:`latentmas.engine.controls`) or replace the team by one agent with the
team's latent budget (``single_matched``); mapper variants are just another matrix in the LatentMapper.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from latentmas.contracts import MEMORY_POLICIES, METHODS  # the names live in contracts; re-exported here
from latentmas.engine import controls
from latentmas.engine.decoding import DecodeSettings, decode
from latentmas.engine.kv import STEP_HOOK, SequenceBatch, extend, left_pad
from latentmas.engine.latent import LatentMapper, latent_rollout
from latentmas.engine.lens import LatentLens
from latentmas.engine.models import LoadedModel, encode, render_chat
from latentmas.engine.topology import Topology


@dataclass(frozen=True)
class MethodSettings:
    method: str
    latent_steps: int = 0
    memory: str = "all"
    decode: DecodeSettings = DecodeSettings(max_new_tokens=512)
    agent_max_new_tokens: int | None = None  # non-final text_mas agents; None = decode.max_new_tokens
    think: bool | str | None = None  # a latentmas.engine.models.THINK_MODES value (bools: on/off; None: model)
    trace: str = "none"  # none | summary | full: latent lens + rendered prompts in the record (engine/lens.py)
    control: controls.MemoryControl = controls.MemoryControl()  # what the final latent_mas agent inherits
    single_matched: bool = False  # control: only the final agent's prompt, thinking the team's total latent steps


@dataclass
class SampleInput:
    sample_id: str
    question: str
    answer_instruction: str
    seed: int


@dataclass
class SampleOutput:
    final_text: str = ""
    agents: list[dict] = field(default_factory=list)
    error: str | None = None


def _generators(samples: list[SampleInput], agent_index: int, device: torch.device) -> list[torch.Generator]:
    gens = []
    for s in samples:
        g = torch.Generator(device=device)
        g.manual_seed((s.seed * 1_000_003 + agent_index) % (2**63 - 1))
        gens.append(g)
    return gens


def _agent_record(name: str, input_tokens: int, latent_steps: int, generated: int, wall: float,
                  text: str | None, latent: dict | None) -> dict:
    return {"name": name, "input_tokens": input_tokens, "latent_steps": latent_steps, "generated_tokens": generated,
            "wall_s": round(wall, 6), "text": text, "latent": latent}


def _decode_agent(lm: LoadedModel, batch: SequenceBatch, prompts: list[list[int]], settings: DecodeSettings,
                  name: str, gens, alive: torch.Tensor):
    ids, mask = left_pad(prompts, lm.pad_token_id, lm.device)
    logits = extend(lm.model, batch, mask, input_ids=ids, want="logits", agent=name, kind="prompt")
    return decode(lm.model, batch, logits, settings, lm.eos_token_ids, lm.pad_token_id, name, gens, active=alive,
                  context_ids=ids, context_mask=mask, graph=lm.decode_graph)


def _synced_clock(device: torch.device) -> float:
    """perf_counter after the device finished its queued work: CUDA kernels run asynchronously, so a wall time read
    without a sync would bill one agent's compute to the next."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _run_single_matched(lm, topo, samples, settings, mapper, prompts, alive) -> list[SampleOutput]:
    final = topo.final_agent
    budget = controls.matched_latent_budget(topo, settings.latent_steps)
    gens = None if settings.decode.greedy else _generators(samples, len(topo.agents) - 1, lm.device)
    res, trace, wall = controls.run_single_matched(lm, prompts, budget, mapper, settings.decode, final.name, gens,
                                                   alive)
    outs = [SampleOutput() for _ in samples]
    for i, o in enumerate(outs):
        failed = trace.failed_at[i]
        if failed is not None:
            o.error = f"non-finite latent at agent {final.name} step {failed}"
        elif res.nonfinite_at[i] is not None:
            o.error = f"non-finite logits at agent {final.name} token {res.nonfinite_at[i]}"
        latent = {"norms": [round(x, 6) for x in trace.norms[i]], "nonfinite": failed is not None}
        o.final_text = lm.tokenizer.decode(res.tokens[i], skip_special_tokens=True)
        # input tokens: the prompt is read twice (before and after thinking)
        o.agents.append(_agent_record(final.name, 2 * len(prompts[i]), budget, len(res.tokens[i]), wall, None,
                                      latent))
    return outs


def run_batch(lm: LoadedModel, topo: Topology, samples: list[SampleInput], settings: MethodSettings,
              mapper: LatentMapper | None = None, progress=None, observe=None) -> list[SampleOutput]:
    """Run one batch through every agent of ``topo``. ``progress(agent, kind)``, if given, is called after each
    prompt, latent step and generated token (kind ``prompt`` / ``latent`` / ``text``; see kv.STEP_HOOK).
    ``observe(agent_name, batch)``, if given, sees the cache each latent_mas agent starts on (tests check what an agent
    can attend to)."""
    token = STEP_HOOK.set(progress)
    try:
        return _run_batch(lm, topo, samples, settings, mapper, observe)
    finally:
        STEP_HOOK.reset(token)


def _think_latently(lm: LoadedModel, shared: SequenceBatch, name: str, prompts: list[list[int]],
                    rendered: list[str] | None, settings: MethodSettings, mapper: LatentMapper, lens, alive,
                    outs: list[SampleOutput], observe, t0: float) -> SequenceBatch:
    """One non-final latent_mas agent: read its prompt onto the shared cache, think ``latent_steps`` steps, append
    its per-sample agent record; returns the (possibly hand-off-truncated) shared cache."""
    bsz = len(prompts)
    ids, mask = left_pad(prompts, lm.pad_token_id, lm.device)
    if observe is not None:
        observe(name, shared)
    hidden = extend(lm.model, shared, mask, input_ids=ids, want="hidden", agent=name, kind="prompt")
    observer = lens.recorder(bsz, name) if lens is not None and settings.latent_steps else None
    _, trace = latent_rollout(lm.model, shared, hidden, settings.latent_steps, mapper, name, alive,
                              observer=observer)
    lensed = observer.finish(trace.norms) if observer is not None else None
    if settings.control.scope == "handoff":
        shared = controls.handoff_truncate(lm.model, shared, settings.memory, name)
    wall = (_synced_clock(lm.device) - t0 - (observer.seconds if observer is not None else 0.0)) / bsz
    for i in range(bsz):
        failed = trace.failed_at[i]
        if failed is not None and alive[i]:
            outs[i].error = f"non-finite latent at agent {name} step {failed}"
            alive[i] = False
        outs[i].agents.append(_agent_record(
            name, len(prompts[i]), settings.latent_steps, 0, wall, None,
            {"norms": [round(x, 6) for x in trace.norms[i]], "nonfinite": failed is not None}))
        if lensed is not None:
            outs[i].agents[-1]["latent"]["lens"] = lensed[i]
        if rendered is not None:
            outs[i].agents[-1]["prompt"] = rendered[i]
    return shared


def _run_batch(lm: LoadedModel, topo: Topology, samples: list[SampleInput], settings: MethodSettings,
               mapper: LatentMapper | None, observe) -> list[SampleOutput]:
    if settings.method not in METHODS:
        raise ValueError(f"unknown method {settings.method!r}; use one of {', '.join(METHODS)}")
    if settings.method == "latent_mas":
        if mapper is None:
            raise ValueError("latent_mas needs a LatentMapper (target norm, optional W_a)")
        if settings.memory not in MEMORY_POLICIES:
            raise ValueError(f"unknown memory policy {settings.memory!r}; use one of {', '.join(MEMORY_POLICIES)}")
        controls.check_memory_settings(settings.memory, settings.control)
    tok = lm.tokenizer
    bsz = len(samples)
    outs = [SampleOutput() for _ in samples]
    alive = torch.ones(bsz, dtype=torch.bool, device=lm.device)
    texts: list[dict[str, str]] = [{} for _ in samples]
    shared = SequenceBatch.empty(lm.model, bsz, lm.device) if settings.method == "latent_mas" else None
    mode = {"baseline": "none", "text_mas": "text", "latent_mas": "latent"}[settings.method]
    tracing = settings.trace != "none"
    lens = (LatentLens(lm.model, tok, settings.trace, lm.eos_token_ids)
            if tracing and settings.method == "latent_mas" else None)
    if settings.method == "latent_mas" and settings.single_matched:
        prompts = [encode(tok, render_chat(tok, topo.render(topo.final_agent, s.question, s.answer_instruction, mode),
                                           settings.think)) for s in samples]
        return _run_single_matched(lm, topo, samples, settings, mapper, prompts, alive)

    for a_idx, agent in enumerate(topo.agents):
        t0 = _synced_clock(lm.device)
        rendered = [render_chat(tok, topo.render(agent, s.question, s.answer_instruction, mode, texts[i]),
                                settings.think) for i, s in enumerate(samples)]
        prompts = [encode(tok, r) for r in rendered]
        gens = None if settings.decode.greedy else _generators(samples, a_idx, lm.device)
        if settings.method == "latent_mas" and not agent.final:
            shared = _think_latently(lm, shared, agent.name, prompts, rendered if tracing else None, settings, mapper,
                                     lens, alive, outs, observe, t0)
            continue

        memory = None
        if settings.method == "latent_mas":
            prev = topo.agents[a_idx - 1].name if a_idx > 0 else None
            batch, memory = controls.final_view(lm, shared, settings.memory, settings.control, prev, prompts,
                                                [s.seed for s in samples])
            if observe is not None:
                observe(agent.name, batch)
        else:
            batch = SequenceBatch.empty(lm.model, bsz, lm.device)
        limit = settings.decode.max_new_tokens
        if not agent.final and settings.agent_max_new_tokens is not None:
            limit = settings.agent_max_new_tokens
        dec_settings = replace(settings.decode, max_new_tokens=limit)  # every sampling knob passes through
        res = _decode_agent(lm, batch, prompts, dec_settings, agent.name, gens, alive)
        wall = (_synced_clock(lm.device) - t0) / bsz
        for i in range(bsz):
            text = tok.decode(res.tokens[i], skip_special_tokens=True)
            if res.nonfinite_at[i] is not None and alive[i]:
                outs[i].error = f"non-finite logits at agent {agent.name} token {res.nonfinite_at[i]}"
                alive[i] = False
            texts[i][agent.name] = text
            outs[i].agents.append(_agent_record(agent.name, len(prompts[i]), 0, len(res.tokens[i]), wall,
                                                text if settings.method == "text_mas" else None, None))
            if tracing:
                outs[i].agents[-1]["prompt"] = rendered[i]
            if memory is not None:
                outs[i].agents[-1]["memory"] = memory[i]  # positions and bytes of cache the agent inherited
            if agent.final:
                outs[i].final_text = text
    return outs
