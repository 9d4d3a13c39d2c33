"""``latentmas bench``: throughput of each method on one model, measured the same way for all three.

Timing targets live here (and in reports), never in unit tests. The benchmark runs each method on the first N
samples of a task at a given batch size after one warm-up batch, and reports wall seconds per sample, decoded
tokens per second and latent steps per second, plus the latent_mas speedup over text_mas.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="latentmas bench", description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--arch", default="sequential")
    ap.add_argument("--latent-steps", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--methods", default="baseline,text_mas,latent_mas")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    from latentmas.engine.alignment import load_or_compute
    from latentmas.engine.decoding import DecodeSettings
    from latentmas.engine.latent import LatentMapper
    from latentmas.engine.methods import MethodSettings, SampleInput, run_batch
    from latentmas.engine.models import load_model
    from latentmas.eval.tasks import get_task
    from latentmas.engine.topology import load_topology

    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    task = get_task(args.task)
    recs = task.load()[: args.n]
    samples = [SampleInput(r["id"], task.user_prompt(r), task.answer_instruction, i) for i, r in enumerate(recs)]
    t0 = time.perf_counter()
    al = load_or_compute(lm.model, None, model_path=args.model)  # fresh process, as `latentmas run` does
    align_s = time.perf_counter() - t0
    mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
    rows = []
    for method in args.methods.split(","):
        topo = load_topology("single" if method == "baseline" else args.arch)
        settings = MethodSettings(method=method, latent_steps=args.latent_steps,
                                  decode=DecodeSettings(args.max_new_tokens, greedy=True))
        run_batch(lm, topo, samples[:1], MethodSettings(method=method, latent_steps=1,
                                                        decode=DecodeSettings(2, True)), mapper)  # warm-up
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        gen = lat = 0
        for start in range(0, len(samples), args.batch_size):
            for out in run_batch(lm, topo, samples[start:start + args.batch_size], settings, mapper):
                gen += sum(a["generated_tokens"] for a in out.agents)
                lat += sum(a["latent_steps"] for a in out.agents)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        rows.append({"method": method, "samples": len(samples), "wall_s": round(wall, 3),
                     "s_per_sample": round(wall / len(samples), 3), "generated_tokens": gen,
                     "decode_tok_per_s": round(gen / wall, 2), "latent_steps": lat})
    by = {r["method"]: r for r in rows}
    if "text_mas" in by and "latent_mas" in by:
        by["latent_mas"]["speedup_vs_text_mas"] = round(by["text_mas"]["wall_s"] / by["latent_mas"]["wall_s"], 2)
    meta = {"model": args.model, "device": str(lm.device), "dtype": str(lm.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "machine": platform.machine(), "task": task.name,
            "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "latent_steps": args.latent_steps,
            "align_s_fresh_process": round(align_s, 2)}
    print(json.dumps(meta))
    print(f"{'method':12s} {'s/sample':>9s} {'tok/s':>8s} {'gen tok':>8s} {'latent':>7s} {'speedup':>8s}")
    for r in rows:
        print(f"{r['method']:12s} {r['s_per_sample']:9.2f} {r['decode_tok_per_s']:8.1f} {r['generated_tokens']:8d} "
              f"{r['latent_steps']:7d} {r.get('speedup_vs_text_mas', ''):>8}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    sys.stdout.flush()
    return 0
