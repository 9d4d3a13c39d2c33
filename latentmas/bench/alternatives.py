"""The same work under another compute dtype, trace level or backend: the rows ``latentmas bench`` needs to choose
a default (CPU dtype), to show a feature's cost (``trace``) and to compare backends (HF vs vLLM) in one process.

Same rules as :mod:`latentmas.bench.measure`: same samples, device synchronised before every clock read, the
alternatives interleaved batch by batch in a rotating order after one warm-up each.
"""
from __future__ import annotations

import dataclasses

from latentmas.bench.measure import Variant, _method_settings, clock, interleaved, runner, spread, step_costs
from latentmas.engine.decoding import retire_mode
from latentmas.engine.kv import prefill_mode
from latentmas.engine.lens import TRACE_LEVELS
from latentmas.engine.methods import SampleInput


def model_compare(models: dict, mappers: dict, topologies: dict, samples: list[SampleInput], vs: list[Variant],
                  settings: dict, batch_size: int, repeats: int, step_context: int, step_repeats: int) -> dict:
    """The same model loaded two ways (``models``: name -> LoadedModel, the reference first): two dtypes (the
    ``dtype`` part) or two linear kernels (the ``kernel`` part).

    Per variant: samples/s each way and the share of samples whose final text equals the reference's (greedy);
    per way: the step costs at one context length, batch 1 and 8. These are the numbers behind the CPU defaults
    (docs/ENGINE.md, "Compute dtype" and "Packed linears")."""
    names = list(models)
    ref = names[0]
    rows = []
    for v in vs:
        runs = {d: runner(models[d], topologies[v.arch], _method_settings(v, settings), mappers[d]) for d in names}
        got = interleaved(runs, samples, batch_size, repeats)
        n = len(samples)
        row = {"variant": v.key, "samples": n, "batch_size": batch_size}
        for d in names:
            row[d] = {"samples_per_s": spread([n / w for w in got["walls"][d]]), "peak_mem_mb": round(got["peaks"][d], 1),
                      "same_final_text_as_" + ref: sum(got["outs"][d][s.sample_id].final_text ==
                                                       got["outs"][ref][s.sample_id].final_text for s in samples) / n}
        other = names[-1]
        row["speedup_" + other] = row[other]["samples_per_s"]["median"] / row[ref]["samples_per_s"]["median"]
        rows.append(row)
    steps = {d: step_costs(models[d], mappers[d], [step_context], [1, 8], step_repeats) for d in names}
    return {"names": names, "end_to_end": rows, "step_costs": steps}


def trace_costs(lm, topo, samples: list[SampleInput], v: Variant, settings: dict, batch_size: int, repeats: int,
                mapper, levels=TRACE_LEVELS) -> list[dict]:
    """latent_mas with each ``trace`` level on the same samples: seconds per sample (what the lens costs per step
    against ``none``, which adds no work: no observer is built) and the bytes a trace adds to one record."""
    from latentmas.engine.lens import trace_bytes_per_sample

    base = _method_settings(v, settings)
    runs = {lvl: runner(lm, topo, dataclasses.replace(base, trace=lvl), mapper) for lvl in levels}
    got = interleaved(runs, samples, batch_size, repeats)
    n = len(samples)
    steps = None
    rows = []
    for lvl in levels:
        outs = [got["outs"][lvl][s.sample_id] for s in samples]
        steps = steps or sum(a["latent_steps"] for o in outs for a in o.agents) / n
        records = [{"agents": o.agents, **({"question": s.question} if lvl != "none" else {})}
                   for s, o in zip(samples, outs)]
        rows.append({"trace": lvl, "variant": v.key, "samples": n, "batch_size": batch_size,
                     "s_per_sample": spread([w / n for w in got["walls"][lvl]]),
                     "latent_steps_per_sample": steps, "trace_bytes_per_sample": trace_bytes_per_sample(records)})
    none = rows[0]["s_per_sample"]["median"]
    for r in rows:
        r["over_none"] = r["s_per_sample"]["median"] / none
    return rows


def graph_compare(lm, mapper, topologies: dict, samples: list[SampleInput], vs: list[Variant], settings: dict,
                  batch_size: int, repeats: int, graphs: list[str]) -> list[dict]:
    """The same model with each decode graph (engine/static_decode.py; ``eager`` first, the reference): samples/s
    and the share of final texts equal to eager's (greedy). Warm-up is one untimed pass over every batch, since a
    compiled graph is built per (batch size, cache bucket) shape; that pass's seconds are reported (compile cost)."""
    rows = []
    for v in vs:
        runs = {g: runner(dataclasses.replace(lm, decode_graph=g), topologies[v.arch], _method_settings(v, settings),
                          mapper) for g in graphs}
        first = {}
        for g, fn in runs.items():
            t0 = clock(lm.device)
            for i in range(0, len(samples), batch_size):
                fn(samples[i:i + batch_size])
            first[g] = round(clock(lm.device) - t0, 2)
        got = interleaved(runs, samples, batch_size, repeats, warmups={})
        row = _versus_row(v, got, samples, batch_size, graphs)
        for g in graphs:
            row[g]["first_pass_s"] = first[g]
        rows.append(row)
    return rows


def _versus_row(v: Variant, got: dict, samples: list[SampleInput], batch_size: int, names: list[str]) -> dict:
    """One variant under competing settings (``names``, the reference first): samples/s and the share of final
    texts equal to the reference's (greedy)."""
    n, ref = len(samples), names[0]
    row = {"variant": v.key, "samples": n, "batch_size": batch_size}
    for name in names:
        row[name] = {"samples_per_s": spread([n / w for w in got["walls"][name]]),
                     "same_final_text_as_" + ref: sum(got["outs"][name][s.sample_id].final_text ==
                                                      got["outs"][ref][s.sample_id].final_text for s in samples) / n}
    return row


def _under(fn, switch, mode: str):
    """``fn`` run inside ``switch(mode)``: an engine switch such as ``prefill_mode`` or ``retire_mode``."""
    def run(batch):
        with switch(mode):
            return fn(batch)

    run.device = fn.device
    return run


def switch_compare(lm, mapper, topologies: dict, samples: list[SampleInput], vs: list[Variant], settings: dict,
                   batch_size: int, repeats: int, switch, modes: list[str]) -> tuple[list[dict], list[dict]]:
    """The same work under each of an engine switch's ``modes`` (the reference first), interleaved: a samples/s
    row per variant with the share of final texts equal to the reference's, and each variant's outputs."""
    rows, outs = [], []
    for v in vs:
        base = runner(lm, topologies[v.arch], _method_settings(v, settings), mapper)
        got = interleaved({m: _under(base, switch, m) for m in modes}, samples, batch_size, repeats)
        rows.append(_versus_row(v, got, samples, batch_size, modes))
        outs.append(got["outs"])
    return rows, outs


def prefill_compare(lm, mapper, topologies: dict, samples: list[SampleInput], vs: list[Variant], settings: dict,
                    batch_size: int, repeats: int) -> list[dict]:
    """Prompt segments as one padded forward (the reference) vs one forward per sample over its real tokens:
    samples/s and identical final texts per variant. The numbers behind ``PREFILL``'s per-device default."""
    rows, outs = switch_compare(lm, mapper, topologies, samples, vs, settings, batch_size, repeats, prefill_mode,
                                ["padded", "per_row"])
    for row, out in zip(rows, outs):
        row["prompt_pad_share"] = _pad_share(out["padded"], samples, batch_size)
    return rows


def retire_compare(lm, mapper, topologies: dict, samples: list[SampleInput], vs: list[Variant], settings: dict,
                   batch_size: int, repeats: int) -> list[dict]:
    """The eager decode with every row kept to the end of its batch (the reference) vs finished rows retired from
    later forwards: samples/s and identical final texts per variant. The numbers behind ``RETIRE``'s CPU default."""
    return switch_compare(lm, mapper, topologies, samples, vs, settings, batch_size, repeats, retire_mode,
                          ["off", "on"])[0]


def _pad_share(outs: dict, samples: list[SampleInput], batch_size: int) -> float:
    """Share of the padded prompt slots that are pads: per batch and agent, B × longest prompt vs the real tokens
    (the records' ``input_tokens``). What ``per_row`` saves in FLOPs."""
    real = padded = 0
    for i in range(0, len(samples), batch_size):
        agents = [outs[s.sample_id].agents for s in samples[i:i + batch_size]]
        for a in range(min(len(row) for row in agents)):  # a sample that failed early has fewer agents
            lens = [row[a]["input_tokens"] for row in agents]
            real, padded = real + sum(lens), padded + len(lens) * max(lens)
    return round(1 - real / padded, 4) if padded else 0.0


def backend_compare(lm, llm, topologies: dict, samples: list[SampleInput], vs: list[Variant], settings: dict,
                    batch_size: int, mapper) -> list[dict]:
    """HF vs vLLM per method on the same samples (:func:`latentmas.pipeline.compare_backends.compare`: samples/s of
    each backend, identical final texts, common prefix; vLLM's engine start is excluded)."""
    from latentmas.pipeline.compare_backends import compare

    out = []
    for v in vs:
        rows = compare(lm, llm, {v.method: topologies[v.arch]}, samples, {v.method: _method_settings(v, settings)},
                       mapper, batch_size)
        out += [{**r, "variant": v.key} for r in rows]
    return out
