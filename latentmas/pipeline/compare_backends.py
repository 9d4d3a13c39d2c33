"""``latentmas compare-backends``: the HF reference vs the vLLM backend on the same samples, greedy.

Per method it reports the share of samples whose final text is identical, the mean common prefix of the two final
answers in tokens (of the model's tokenizer; the HF answer's length for identical ones), samples/s of each backend,
and for latent_mas the max |Δ| of the final agent's first-token logits between the HF hand-off (cache) and vLLM's
prefill over the prompt embeddings. vLLM returns no full logit vector: the engine runs with
``logprobs_mode="raw_logits"`` and returns its top-k raw logits, compared with the HF logits at the same ids
(k = 20, vLLM's default cap; the argmax is among them).

The engine starts once (minutes on a CPU) and is not part of any samples/s. ``latentmas bench --backend hf,vllm``
builds on :func:`compare` (same samples, same engine).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from latentmas.engine.backends.handoff import final_prompts, handoff_first_logits, latent_prefix, prompt_embeds
from latentmas.engine.backends.vllm import VLLMBackend, VLLMOptions, open_engine
from latentmas.engine.decoding import DecodeSettings
from latentmas.engine.methods import METHODS, MethodSettings, SampleInput, run_batch
from latentmas.engine.models import encode

log = logging.getLogger(__name__)
TOP_K = 20


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def first_logit_diff(lm, llm, topo, samples, settings, mapper, k: int = TOP_K) -> dict:
    """max |Δ| over samples and vLLM's top-k ids of the first-token logits (HF hand-off vs vLLM prompt embeds)."""
    from vllm import SamplingParams

    ref = handoff_first_logits(lm, topo, samples, settings, mapper).cpu()  # [B, V]
    prefix = latent_prefix(lm, topo, samples, settings, mapper)
    reqs = [{"prompt_embeds": prompt_embeds(lm, p.memory, f)} for p, f in
            zip(prefix, final_prompts(lm, topo, samples, settings))]
    outs = llm.generate(reqs, SamplingParams(temperature=0.0, max_tokens=1, logprobs=k), use_tqdm=False)
    worst, same_argmax = 0.0, 0
    for i, o in enumerate(outs):
        top = o.outputs[0].logprobs[0]  # {token id: Logprob(logprob=raw logit)}
        ids = torch.tensor(list(top))
        got = torch.tensor([top[t].logprob for t in top], dtype=torch.float32)
        worst = max(worst, float((got - ref[i, ids]).abs().max()))
        same_argmax += int(ids[got.argmax()]) == int(ref[i].argmax())
    return {"max_abs_first_logit_diff": worst, "first_logit_scale": float(ref.abs().max()),
            "same_first_argmax": same_argmax / len(samples)}


def _collect():
    got: dict = {}

    def on_done(batch, outs):
        got.update({s.sample_id: o for s, o in zip(batch, outs)})

    return got, on_done


def compare(lm, llm, topos: dict, samples: list[SampleInput], settings_of: dict, mapper, batch_size: int) -> list:
    """One row per method and backend on the same samples (``topos``/``settings_of`` keyed by method)."""
    rows = []
    tok = lm.tokenizer
    for method, settings in settings_of.items():
        topo = topos[method]
        t0 = time.perf_counter()
        hf = {}
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            hf.update({s.sample_id: o for s, o in zip(batch, run_batch(lm, topo, batch, settings, mapper))})
        hf_s = time.perf_counter() - t0
        got, on_done = _collect()
        backend = VLLMBackend(lm, llm, VLLMOptions(), batch_size, lambda fn, b, done: done(b, fn(b)))
        t0 = time.perf_counter()
        backend.run_shard(topo, samples, settings, mapper, on_done)
        vl_s = time.perf_counter() - t0
        a = [encode(tok, hf[s.sample_id].final_text) for s in samples]
        b = [encode(tok, got[s.sample_id].final_text) for s in samples]
        row = {"method": method, "n": len(samples),
               "identical_share": sum(hf[s.sample_id].final_text == got[s.sample_id].final_text
                                      for s in samples) / len(samples),
               "mean_common_prefix_tokens": sum(common_prefix(x, y) for x, y in zip(a, b)) / len(samples),
               "mean_hf_tokens": sum(map(len, a)) / len(samples),
               "hf_samples_per_s": len(samples) / hf_s, "vllm_samples_per_s": len(samples) / vl_s,
               "vllm_errors": [got[s.sample_id].error for s in samples if got[s.sample_id].error]}
        if method == "latent_mas":
            row.update(first_logit_diff(lm, llm, topo, samples, settings, mapper))
        log.info("%s", json.dumps(row))  # each method as soon as it is measured (a CPU run takes many minutes)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| method | n | identical final text | mean common prefix (tokens) | mean HF answer (tokens) | "
             "max abs first-logit diff (scale) | HF samples/s | vLLM samples/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = (f"{r['max_abs_first_logit_diff']:.2e} ({r['first_logit_scale']:.1f})"
                if "max_abs_first_logit_diff" in r else "-")
        lines.append(f"| {r['method']} | {r['n']} | {r['identical_share']:.0%} | {r['mean_common_prefix_tokens']:.1f} | "
                     f"{r['mean_hf_tokens']:.1f} | {diff} | {r['hf_samples_per_s']:.3f} | "
                     f"{r['vllm_samples_per_s']:.3f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="latentmas compare-backends", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model folder")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--arch", default="sequential")
    ap.add_argument("--latent-steps", type=int, default=10)
    ap.add_argument("--realign", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--align-file", default=None, help="cached W_a (computed in a fresh process if absent)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--vllm-max-model-len", type=int, default=4096)
    ap.add_argument("--json", default=None, help="also write the rows here")
    return ap


def cli_main(argv: list[str]) -> int:
    from latentmas.engine.alignment import load_or_compute, target_norm
    from latentmas.engine.backends import BackendError
    from latentmas.engine.backends.vllm import check_supported
    from latentmas.engine.latent import LatentMapper
    from latentmas.engine.models import load_model
    from latentmas.engine.topology import load_topology
    from latentmas.eval.tasks import get_task
    from latentmas.pipeline.identity import sample_seed

    args = build_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise BackendError(f"unknown methods {bad}; use {', '.join(METHODS)}")
        check_supported(args.model, "latent_mas" if "latent_mas" in methods else methods[0], "all")
        task = get_task(args.task)
    except (BackendError, ValueError) as exc:
        print(f"latentmas compare-backends: error: {exc}", file=sys.stderr)
        return 2
    records = task.load()[: args.n]
    samples = [SampleInput(r["id"], task.user_prompt(r), task.answer_instruction, sample_seed(0, r["id"]))
               for r in records]
    lm = load_model(args.model, dtype=args.dtype)
    mapper = None
    if "latent_mas" in methods:
        if args.realign:
            al = load_or_compute(lm.model, args.align_file, 1e-5, model_path=args.model)
            mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
        else:
            mapper = LatentMapper(target_norm(lm.model), None, lm.device, lm.dtype)
    t0 = time.perf_counter()
    llm = open_engine(args.model, lm.dtype, VLLMOptions(max_model_len=args.vllm_max_model_len),
                      prompt_embeds_on=True, logprobs_mode="raw_logits")
    log.info("vLLM engine started in %.0f s", time.perf_counter() - t0)
    decode = DecodeSettings(max_new_tokens=args.max_new_tokens, greedy=True)
    settings_of = {m: MethodSettings(method=m, latent_steps=args.latent_steps if m == "latent_mas" else 0,
                                     decode=decode) for m in methods}
    topos = {m: load_topology("single" if m == "baseline" else args.arch) for m in methods}
    rows = compare(lm, llm, topos, samples, settings_of, mapper, args.batch_size)
    print(markdown(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0
