"""``latentmas bench MODEL``: every cost side by side in one process (docs/BENCH.md).

Parts (each can be skipped): step costs (latent vs decode step at several context lengths and batch sizes),
end to end per method and architecture on the same samples (interleaved, repeated), batch scaling, W_a (fresh
computation from the weight files, cached load). Writes ``NAME.json`` (with the ``summary`` of target ratios),
``NAME.md`` and ``NAME.png`` to ``--out-dir`` (``--name``, default ``bench``). Timing targets live here, never in unit tests.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from latentmas.contracts import COMPILED_CONFLICT, LINEAR_KERNELS
from latentmas.engine.decoding import RETIRE_MODES, retire_mode
from latentmas.engine.kv import PREFILL_MODES, prefill_mode
from latentmas.engine.packed_linear import onednn_available

PARTS = ("steps", "e2e", "scaling", "w_a", "dtype", "kernel", "trace", "graph", "prefill", "retire")
QUICK = {"contexts": "32,64", "step_batch_sizes": "1,8", "step_repeats": 3, "n": 2, "batch_size": 2, "repeats": 1,
         "scaling_batch_sizes": "1,2", "max_new_tokens": 8, "agent_max_new_tokens": 4, "latent_steps": 2,
         "archs": "sequential"}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="latentmas bench", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model folder")
    ap.add_argument("--out-dir", default="reports/bench", help="NAME.json, NAME.md, NAME.png go here")
    ap.add_argument("--name", default="bench", help="file stem of the outputs (the committed snapshot: latest)")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--methods", default="baseline,text_mas,latent_mas")
    ap.add_argument("--archs", default="sequential,hierarchical")
    ap.add_argument("--n", type=int, default=8, help="samples for end to end and batch scaling")
    ap.add_argument("--batch-size", type=int, default=4, help="end-to-end batch size")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of end to end and batch scaling")
    ap.add_argument("--latent-steps", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=192, help="final agent (the demo's limit by default)")
    ap.add_argument("--agent-max-new-tokens", type=int, default=128, help="non-final text_mas agents (demo's)")
    ap.add_argument("--ignore-eos", action="store_true",
                    help="decode every agent to its limit (fixes the work when comparing with the reference)")
    ap.add_argument("--contexts", default="128,512,2048", help="step-cost context lengths")
    ap.add_argument("--step-batch-sizes", default="1,8")
    ap.add_argument("--step-repeats", type=int, default=10)
    ap.add_argument("--scaling-batch-sizes", default=None, help="default 1,2,4,8 (CPU) or 1,2,4,8,16,32 (GPU)")
    ap.add_argument("--scaling-max-new-tokens", type=int, default=None,
                    help="token limit of every agent in the batch-scaling part (default: the end-to-end limits); "
                         "samples/s ratios between batch sizes need far fewer tokens than a full answer")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: " + ",".join(PARTS))
    ap.add_argument("--compare-dtype", default="auto",
                    help="the dtype the `dtype` part compares the main one with (auto: float32 vs bfloat16 on a CPU, "
                         "none elsewhere; none: skip)")
    ap.add_argument("--dtype-methods", default="baseline,latent_mas", help="methods of the `dtype` part")
    ap.add_argument("--linear-kernel", default="auto", choices=LINEAR_KERNELS,
                    help="linear kernel of every other part (docs/ENGINE.md, \"Packed linears\")")
    ap.add_argument("--kernel-methods", default="baseline,latent_mas",
                    help="methods of the `kernel` part: plain linears (aten) vs oneDNN-packed, on a CPU")
    ap.add_argument("--decode-graph", default="eager", help="decode graph of every other part (docs/ENGINE.md)")
    ap.add_argument("--decode-graphs", default="auto",
                    help="the `graph` part: comma list of eager,static,compiled compared on --graph-methods (auto: "
                         "all three on a GPU, none elsewhere: compiling on a CPU takes minutes; none: skip)")
    ap.add_argument("--graph-methods", default="baseline,latent_mas", help="methods of the `graph` part")
    ap.add_argument("--prefill", default="auto", choices=PREFILL_MODES,
                    help="how prompt segments are computed in every other part (docs/ENGINE.md, \"Prompt prefill\")")
    ap.add_argument("--prefill-methods", default="baseline,text_mas,latent_mas",
                    help="methods of the `prefill` part: prompt segments padded vs per row (docs/ENGINE.md)")
    ap.add_argument("--retire", default="auto", choices=RETIRE_MODES,
                    help="whether the decode drops finished rows from later forwards, in every other part "
                         "(docs/ENGINE.md, \"Retiring finished rows\")")
    ap.add_argument("--retire-methods", default="baseline,text_mas,latent_mas",
                    help="methods of the `retire` part: every row decoded to the end of its batch vs finished rows "
                         "retired")
    ap.add_argument("--backend", default="hf", help="hf, or hf,vllm: adds HF vs vLLM samples/s per method (vLLM "
                    "engine started once, after the HF parts on a CPU, before the HF model on a GPU)")
    ap.add_argument("--reference-json", default=None,
                    help="the original implementation's timing, {\"method\", \"samples_per_s\", \"batch_size\"} "
                         "(recipe in docs/BENCH.md); adds over_reference_samples_per_s")
    ap.add_argument("--align-file", default=None,
                    help="with --skip w_a: the cached W_a to use instead of computing one (e.g. results/align/M...)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke run: " + json.dumps(QUICK))
    if "--quick" in argv:  # quick settings are defaults: explicit flags still win
        ap.set_defaults(**QUICK)
    return ap.parse_args(argv)


def _w_a(lm, model_path: str, device: str, repeats: int = 3) -> dict:
    """Fresh W_a in a child process (``latentmas align``: weight files only), then the cached load as inference
    does it (file + fingerprint check against the loaded weights)."""
    from latentmas.engine.alignment import load_or_compute
    from latentmas.bench.measure import spread

    with tempfile.TemporaryDirectory(prefix="latentmas-bench-") as tmp:
        out = Path(tmp) / "w_a.safetensors"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "latentmas.cli", "align", "--model", model_path, "--device",
                               device, "--out", str(out)], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"latentmas align failed:\n{proc.stderr[-2000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        loads = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            al = load_or_compute(lm.model, out, child["ridge_lambda"], model_path=model_path)
            loads.append(time.perf_counter() - t0)
    return {"al": al, "compute_s": child["compute_s"], "process_wall_s": round(wall, 3), "source": child["source"],
            "peak_mem_mb": child["peak_mem_mb"], "peak_kind": "CUDA max allocated" if lm.device.type == "cuda" else
            "child peak RSS (includes mapped weight-file pages and the Python/torch runtime)",
            "cached_load_s": spread(loads)}


def _backends(args) -> list[str]:
    backends = [b for b in args.backend.split(",") if b]
    bad = [b for b in backends if b not in ("hf", "vllm")]
    if bad or "hf" not in backends:
        raise ValueError(f"--backend {args.backend!r}: use hf or hf,vllm (vLLM is compared with the HF reference)")
    if "vllm" in backends:
        from latentmas.engine.backends.vllm import check_supported

        check_supported(args.model, "latent_mas", "all")  # vLLM missing or model unsupported: before any long part
    return backends


def _other_dtype(args, lm) -> str | None:
    if args.compare_dtype == "none":
        return None
    if args.compare_dtype != "auto":
        return args.compare_dtype
    if lm.device.type != "cpu":
        return None
    return "float32" if lm.dtype == torch.bfloat16 else "bfloat16"


def _graphs(args, on_gpu: bool) -> list[str]:
    """Decode graphs of the `graph` part, eager (the reference) first; [] = skip."""
    from latentmas.engine.static_decode import DECODE_GRAPHS

    if args.decode_graphs == "none" or (args.decode_graphs == "auto" and not on_gpu):
        return []
    asked = list(DECODE_GRAPHS) if args.decode_graphs == "auto" else args.decode_graphs.split(",")
    bad = [g for g in asked if g not in DECODE_GRAPHS]
    if bad:
        raise ValueError(f"--decode-graphs: unknown {bad}; use a comma list of {', '.join(DECODE_GRAPHS)}")
    return ["eager"] + [g for g in asked if g != "eager"]


def _vllm_engine(args, dtype):
    from latentmas.engine.backends.vllm import VLLMOptions, open_engine

    t0 = time.perf_counter()
    llm = open_engine(args.model, dtype, VLLMOptions(max_model_len=4096), prompt_embeds_on=True,
                      logprobs_mode="raw_logits")
    return llm, time.perf_counter() - t0


def cli_main(argv: list[str]) -> int:
    args = parse_args(argv)
    from latentmas.engine.models import ModelLoadError, load_model, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    try:
        unknown = skip - set(PARTS)
        if unknown:
            raise ValueError(f"unknown --skip part(s) {sorted(unknown)}; parts: {', '.join(PARTS)}")
        backends = _backends(args)
        _graphs(args, torch.cuda.is_available())  # a bad --decode-graphs fails here, before any long part
        engine = None
        if "vllm" in backends and torch.cuda.is_available():  # vLLM spawns its engine before this process uses CUDA
            engine = _vllm_engine(args, resolve_dtype(args.dtype, torch.device("cuda")))
        lm = load_model(args.model, dtype=args.dtype, device=args.device, decode_graph=args.decode_graph,
                        linear_kernel=args.linear_kernel)
        if "graph" not in skip and "compiled" in _graphs(args, lm.device.type == "cuda") and \
                lm.linear_kernel == "onednn":
            raise ValueError(f"--decode-graphs compiled: the linears are packed ({COMPILED_CONFLICT}); add "
                             f"--linear-kernel aten")
    except (ModelLoadError, ValueError) as exc:  # bad input (BackendError is a ValueError): one message, exit 2
        print(f"latentmas bench: error: {exc}", file=sys.stderr)
        return 2
    with prefill_mode(args.prefill), retire_mode(args.retire):
        result = run_parts(args, lm, skip, backends, engine)
    from latentmas.bench import report

    paths = report.write(result, Path(args.out_dir), args.name)
    print(report.markdown(result))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def run_parts(args, lm, skip: set, backends: list[str], engine) -> dict:
    """Every part not skipped, in a fixed order, on one loaded model (and one vLLM engine when asked)."""
    from latentmas.bench import alternatives, measure, report
    from latentmas.engine.latent import LatentMapper
    from latentmas.engine.methods import SampleInput
    from latentmas.engine.topology import load_topology
    from latentmas.eval.tasks import get_task

    on_gpu = lm.device.type == "cuda"
    result: dict = {"environment": report.environment(lm, args.model), "settings": {
        k: v for k, v in vars(args).items() if k not in {"model", "out_dir", "name", "reference_json"}}}
    al = _alignment(args, lm, skip, result)
    mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
    if "steps" not in skip:
        result["step_costs"] = measure.step_costs(lm, mapper, _ints(args.contexts), _ints(args.step_batch_sizes),
                                                  args.step_repeats)
    task = get_task(args.task)
    recs = task.load()[: args.n]
    samples = [SampleInput(r["id"], task.user_prompt(r), task.answer_instruction, i) for i, r in enumerate(recs)]
    archs = args.archs.split(",")
    vs = measure.variants(args.methods.split(","), archs)
    first = [v for v in vs if v.arch in ("single", archs[0])]  # one architecture for the costlier parts
    topologies = {v.arch: load_topology(v.arch) for v in vs}
    settings = {"max_new_tokens": args.max_new_tokens, "agent_max_new_tokens": args.agent_max_new_tokens,
                "latent_steps": args.latent_steps}
    run_lm = measure.without_eos(lm) if args.ignore_eos else lm
    if "e2e" not in skip:
        result["end_to_end"] = measure.end_to_end(run_lm, topologies, samples, vs, settings, args.batch_size,
                                                  args.repeats, mapper)
    if "scaling" not in skip:
        sizes = _ints(args.scaling_batch_sizes or ("1,2,4,8,16,32" if on_gpu else "1,2,4,8"))
        limit = args.scaling_max_new_tokens
        scale_settings = dict(settings, **({"max_new_tokens": limit, "agent_max_new_tokens": limit} if limit else {}))
        result["batch_scaling"] = measure.batch_scaling(run_lm, topologies, samples, first, scale_settings, sizes,
                                                        args.repeats, mapper)
    latent_first = next((v for v in first if v.method == "latent_mas"), None)
    if "trace" not in skip and latent_first:
        result["trace"] = alternatives.trace_costs(run_lm, topologies[latent_first.arch], samples, latent_first,
                                                   settings, args.batch_size, args.repeats, mapper)
    other = None if "dtype" in skip else _other_dtype(args, lm)
    if other:
        result["dtype"] = _dtype_part(args, lm, run_lm, other, al, mapper, topologies, samples, first, settings)
    if "kernel" not in skip and lm.device.type == "cpu" and onednn_available(lm.dtype) and \
            lm.decode_graph != "compiled":
        result["kernel"] = _kernel_part(args, lm, run_lm, mapper, topologies, samples, first, settings)
    graphs = [] if "graph" in skip else _graphs(args, on_gpu)
    if len(graphs) > 1:
        gvs = [v for v in first if v.method in args.graph_methods.split(",")]
        result["graph"] = {"graphs": graphs, "rows": alternatives.graph_compare(
            run_lm, mapper, topologies, samples, gvs, settings, args.batch_size, args.repeats, graphs)}
    if "prefill" not in skip:
        pvs = [v for v in first if v.method in args.prefill_methods.split(",")]
        result["prefill"] = alternatives.prefill_compare(run_lm, mapper, topologies, samples, pvs, settings,
                                                         args.batch_size, args.repeats)
    if "retire" not in skip and lm.decode_graph == "eager" and not args.ignore_eos:  # else nothing is retired
        rvs = [v for v in first if v.method in args.retire_methods.split(",")]
        result["retire"] = alternatives.retire_compare(run_lm, mapper, topologies, samples, rvs, settings,
                                                       args.batch_size, args.repeats)
    if "vllm" in backends:
        llm, start_s = engine or _vllm_engine(args, lm.dtype)
        result["backends"] = {"engine_start_s": round(start_s, 1), "rows": alternatives.backend_compare(
            lm, llm, topologies, samples, first, settings, args.batch_size, mapper)}
    if args.reference_json:
        result["reference"] = json.loads(Path(args.reference_json).read_text())
    result["summary"] = report.summarise(result, on_gpu)
    return result


def _dtype_part(args, lm, run_lm, other: str, al, mapper, topologies, samples, first, settings) -> dict:
    """The main model vs the same model loaded in dtype ``other``, interleaved (the numbers behind the CPU dtype)."""
    from latentmas.bench import alternatives, measure
    from latentmas.engine.latent import LatentMapper
    from latentmas.engine.models import dtype_name, load_model

    lm_b = load_model(args.model, dtype=other, device=str(lm.device), decode_graph=lm.decode_graph,
                      linear_kernel=_same_kernel(lm, other))
    models = {dtype_name(lm.dtype): run_lm,
              dtype_name(lm_b.dtype): measure.without_eos(lm_b) if args.ignore_eos else lm_b}
    mappers = dict(zip(models, (mapper, LatentMapper(al.target_norm, al.w_a, lm_b.device, lm_b.dtype))))
    dvs = [v for v in first if v.method in args.dtype_methods.split(",")]
    return alternatives.model_compare(models, mappers, topologies, samples, dvs, settings, args.batch_size,
                                      args.repeats, 512, args.step_repeats)


def _same_kernel(lm, dtype: str) -> str:
    """The main model's linear kernel for a second model in ``dtype`` (the ``dtype`` part compares dtypes only),
    or ``aten`` where oneDNN cannot pack that dtype."""
    if lm.linear_kernel == "onednn" and not onednn_available(getattr(torch, dtype)):
        return "aten"
    return lm.linear_kernel


def _kernel_part(args, lm, run_lm, mapper, topologies, samples, first, settings) -> dict:
    """Plain linears (aten, the reference) vs oneDNN-packed ones: the same model loaded the other way beside the
    main one, interleaved (the numbers behind ``linear_kernel: auto``)."""
    from latentmas.bench import alternatives, measure
    from latentmas.engine.models import dtype_name, load_model

    other = load_model(args.model, dtype=dtype_name(lm.dtype), device=str(lm.device), decode_graph=lm.decode_graph,
                       linear_kernel="aten" if lm.linear_kernel == "onednn" else "onednn")
    if args.ignore_eos:
        other = measure.without_eos(other)
    models = {m.linear_kernel: m for m in (run_lm, other)}
    models = {k: models[k] for k in ("aten", "onednn")}
    kvs = [v for v in first if v.method in args.kernel_methods.split(",")]
    return alternatives.model_compare(models, dict.fromkeys(models, mapper), topologies, samples, kvs, settings,
                                      args.batch_size, args.repeats, 512, args.step_repeats)


def _alignment(args, lm, skip: set, result: dict):
    """The W_a every latent measurement uses: the cached file (``--skip w_a --align-file``) or a fresh one whose
    computation and cached load are the ``w_a`` part."""
    if "w_a" in skip and args.align_file:
        from latentmas.engine.alignment import load_or_compute

        return load_or_compute(lm.model, args.align_file, model_path=args.model)
    wa = _w_a(lm, args.model, str(lm.device))
    if "w_a" not in skip:
        result["w_a"] = {k: v for k, v in wa.items() if k != "al"}
    return wa["al"]
