"""``latentmas run``: one shard of one experiment cell → one JSON record per sample.

Guarantees a cluster user relies on:

* **deterministic**: samples in the dataset's canonical order, the first ``--n`` of them, shard ``I/N`` a contiguous
  slice; each sample's seed derives from (seed, sample id), so it is independent of sharding and batching;
* **resumable**: an existing ``--out`` is repaired (a torn last line is discarded with a warning) and finished ids
  are skipped; records are appended whole and fsynced one by one, so SIGKILL at any instant loses at most the batch
  in flight and never duplicates a record;
* **identity-checked**: every record carries the cell's ``config_hash``; resuming onto a file written with other
  settings is refused (naming the file and both hashes) instead of mixing results;
* **one set of defaults**: every option a pipeline config also sets defaults to the config schema's value
  (:mod:`latentmas.pipeline.defaults`), so ``latentmas run`` with no options runs what a config that sets nothing runs;
* **fault-contained**: a non-finite latent vector or logits fails that sample with the reason; CUDA OOM retries the
  batch at half size down to 1, then records those samples as failed; the shard carries on.

``--backend`` picks who computes (:mod:`latentmas.engine.backends`): ``hf`` (default, the reference) or ``vllm``.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from latentmas import __version__
from latentmas.contracts import EXIT_BAD_INPUT, RECORD_SCHEMA as RECORD_JSON_SCHEMA, check
from latentmas.engine.backends import BACKENDS
from latentmas.engine.decoding import DecodeSettings
from latentmas.contracts import (KEEP_RULES, LINEAR_KERNELS, MAPPERS, MEMORY_POLICIES, MEMORY_SCOPES, METHODS,
                                 control_name)
from latentmas.engine.controls import MemoryControl
from latentmas.engine.methods import MethodSettings, SampleInput, SampleOutput
from latentmas.engine.lens import DEFAULT_TRACE, TRACE_LEVELS
from latentmas.engine.static_decode import DECODE_GRAPHS
from latentmas.engine.models import THINK_MODES, ModelLoadError
from latentmas.pipeline.defaults import SAMPLING_KNOBS, run_defaults, vllm_defaults
from latentmas.pipeline.identity import CellSpec, sample_seed
from latentmas.records import RecordWriter, repair

log = logging.getLogger(__name__)
RECORD_SCHEMA = 1


class RunConfigError(ValueError):
    pass


def shard_slice(n_items: int, shard: int, n_shards: int) -> range:
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise RunConfigError(f"--shard {shard}/{n_shards}: need 0 <= I < N and N >= 1")
    return range(shard * n_items // n_shards, (shard + 1) * n_items // n_shards)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise RunConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    shard_slice(1, i, n)
    return i, n


class InjectedOOM(RuntimeError):
    """Raised by the test hook LATENTMAS_INJECT_OOM_ABOVE=B for batches larger than B (CPU tests of the back-off)."""


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.cuda.OutOfMemoryError, InjectedOOM))


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_with_backoff(run_fn, samples: list, on_done) -> None:
    """Run a batch; on OOM split it in halves (down to 1), then give up on single samples with an error."""
    limit = os.environ.get("LATENTMAS_INJECT_OOM_ABOVE")
    try:
        if limit is not None and len(samples) > int(limit):
            raise InjectedOOM(f"injected OOM for batch of {len(samples)}")
        outs = run_fn(samples)
    except Exception as exc:  # noqa: BLE001 - only OOM is handled; everything else re-raised below
        if not _is_oom(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(samples) == 1:
            log.error("out of memory on a single sample (%s): recording it as failed", samples[0].sample_id)
            failed = SampleOutput(error="out of memory at batch size 1")
            on_done(samples, [failed])
            return
        half = len(samples) // 2
        log.warning("out of memory at batch size %d: retrying as %d + %d", len(samples), half, len(samples) - half)
        run_with_backoff(run_fn, samples[:half], on_done)
        run_with_backoff(run_fn, samples[half:], on_done)
        return
    on_done(samples, outs)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="latentmas run", description="Run one shard of one experiment cell.")
    ap.add_argument("--model", required=True, help="model folder (from `latentmas fetch-model`) or Hub id")
    ap.add_argument("--model-name", default=None, help="name recorded in results (default: from the folder)")
    ap.add_argument("--task", required=True)
    ap.add_argument("--data", default=None, help="dataset parquet from `latentmas fetch-data` (default: vendored)")
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--arch", help="topology: sequential, hierarchical or a .yaml path")
    ap.add_argument("--latent-steps", type=int)
    ap.add_argument("--realign", dest="realign", action="store_true")
    ap.add_argument("--no-realign", dest="realign", action="store_false")
    ap.add_argument("--ridge-lambda", type=float)
    ap.add_argument("--align-file", default=None, help="cached W_a file (computed and written if absent)")
    ap.add_argument("--memory", choices=MEMORY_POLICIES)
    ctl = ap.add_argument_group("controls (latent_mas only; docs/CONTROLS.md)")
    ctl.add_argument("--no-transfer", action="store_true", help="the final agent receives no memory")
    ctl.add_argument("--single-matched", action="store_true",
                     help="one agent (the final agent's prompt) thinks the team's total latent steps, then answers")
    ctl.add_argument("--mapper", default=None, choices=MAPPERS,
                     help="latent map (default: ridge with --realign, identity with --no-realign); random maps are "
                          "seeded by --seed")
    ctl.add_argument("--keep-fraction", type=float, default=1.0,
                     help="memory budget: share of the handed-over positions the final agent keeps")
    ctl.add_argument("--keep-rule", default="random", choices=KEEP_RULES, help="which positions a budget keeps")
    ctl.add_argument("--memory-scope", default="final", choices=MEMORY_SCOPES,
                     help="apply --memory when building the final agent's view (final) or after every hand-off")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--n", type=int, default=None, help="use the first N samples (default: all)")
    ap.add_argument("--shard", default="0/1", help="I/N: this job's contiguous slice of the N samples")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--greedy", action=argparse.BooleanOptionalAction,
                    help="greedy decoding (reruns are bit-identical); --no-greedy samples")
    ap.add_argument("--temperature", type=float, help="default: the model's generation_config, else 1.0")
    ap.add_argument("--top-p", type=float, help="default: the model's generation_config, else 1.0 (off)")
    ap.add_argument("--top-k", type=int, help="0 = off; default: the model's generation_config, else 50")
    ap.add_argument("--min-p", type=float, help="0 = off; default: the model's generation_config, else off")
    ap.add_argument("--repetition-penalty", type=float, help="1 = off; default: the model's generation_config, else off")
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--agent-max-new-tokens", type=int,
                    help="cap for non-final text_mas agents (default: --max-new-tokens)")
    ap.add_argument("--think", choices=THINK_MODES,
                    help="on/off: the template's enable_thinking; model: the template's default; tag: append a "
                         "literal <think> to the assistant turn (the original's --think)")
    ap.add_argument("--prompt-style", choices=("ours", "original"),
                    help="the task's prompt presentation (docs/TASKS.md)")
    ap.add_argument("--chat-template", default=None, help="fallback template name or jinja for template-less models")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto", help="device of the HF model (latent_mas agents on any backend)")
    ap.add_argument("--decode-graph", default="eager", choices=DECODE_GRAPHS,
                    help="HF text decode steps: eager (the exact reference), static (preallocated cache, fixed "
                         "shapes) or compiled (static + torch.compile; CUDA graphs on a GPU): docs/ENGINE.md")
    ap.add_argument("--linear-kernel", default="auto", choices=LINEAR_KERNELS,
                    help="linears through weights oneDNN packed once (onednn), or plain PyTorch (aten); auto = onednn "
                         "on x86-64 CPUs where measured faster (docs/ENGINE.md, \"Packed linears on the CPU\")")
    ap.add_argument("--backend", default="hf", choices=BACKENDS,
                    help="hf = our transformers loop (the reference); vllm = vLLM decodes (docs/ENGINE.md)")
    add_vllm_options(ap)
    ap.add_argument("--settings", default=None,
                    help="YAML/JSON file of option values (keys as the long options, '-' or '_'); flags override")
    ap.add_argument("--trace", choices=TRACE_LEVELS, default=DEFAULT_TRACE,
                    help="latent lens + rendered prompts in each record (docs/DESIGN.md); none = no per-step work")
    ap.add_argument("--out", required=True)
    ap.set_defaults(**run_defaults())  # the same defaults as the pipeline config (latentmas.pipeline.defaults)
    return ap


def _apply_settings_file(ap: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = ap.parse_args(argv)
    if args.settings:
        import yaml

        data = yaml.safe_load(Path(args.settings).read_text()) or {}
        known = {a.dest for a in ap._actions}
        defaults = {}
        for key, value in data.items():
            dest = key.replace("-", "_")
            if dest not in known:
                raise RunConfigError(f"{args.settings}: unknown setting {key!r}")
            defaults[dest] = value
        ap.set_defaults(**defaults)
        args = ap.parse_args(argv)
    return args


def _load_records(args) -> list[dict]:
    from latentmas.eval.tasks import get_task

    task = get_task(args.task)
    if args.data:
        from latentmas.eval.tasks.fetch import read_dataset

        return read_dataset(args.data)
    return task.load()


def expand_cell_argv(argv: list[str]) -> list[str]:
    """``--config FILE --cell ID [--shard I/N]`` → the explicit options the pipeline would pass for that shard.

    Options given explicitly after them still win (argparse keeps the last value), e.g. ``--batch-size 1``.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--cell")
    pre.add_argument("--shard", default="0/1")
    known, rest = pre.parse_known_args(argv)
    if not known.config and not known.cell:
        return argv
    if not (known.config and known.cell):
        raise RunConfigError("--config and --cell go together")
    from latentmas import contracts
    from latentmas.pipeline import experiment

    cfg = experiment.load_config(known.config)
    cell = experiment.get_cell(cfg, known.cell)
    shard, n_shards = parse_shard(known.shard)
    settings = experiment.cell_settings(cfg, cell, shard, n_shards)
    align = contracts.align_file(cell["model"]) if experiment.needs_align(settings) else None
    base = experiment.run_args(settings, contracts.model_dir(cell["model"]), cell["model"],
                               contracts.data_file(cell["task"]), align)
    return base + rest


def cli_main(argv: list[str]) -> int:
    ap = build_parser()
    ap.add_argument("--config", default=None, help="pipeline config (with --cell): run that cell's shard as the "
                                                   "pipeline would; explicit options after it override")
    ap.add_argument("--cell", default=None, help="cell id, e.g. qwen/gsm8k/latent_mas-sequential-k10-realign/seed0")
    try:
        argv = expand_cell_argv(argv)
        args = _apply_settings_file(ap, argv)
        return run(args)
    except (RunConfigError, ValueError, FileNotFoundError, ModelLoadError) as exc:  # ConfigError is a ValueError
        print(f"latentmas run: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def resolve_mapper(args: argparse.Namespace) -> str:
    """--mapper wins; otherwise --realign picks ridge (W_a) and --no-realign identity."""
    return args.mapper or ("ridge" if args.realign else "identity")


def build_mapper(lm, args: argparse.Namespace, kind: str):
    """The LatentMapper of a latent_mas cell: W_a, identity or a seeded random map, always with the same rescale."""
    from latentmas.engine.alignment import load_or_compute, target_norm
    from latentmas.engine.latent import LatentMapper
    from latentmas.engine.mappers import map_matrix

    if kind in ("ridge", "random_spectrum"):
        al = load_or_compute(lm.model, args.align_file, args.ridge_lambda, model_path=args.model)
        norm, w_a = al.target_norm, al.w_a
    else:
        norm, w_a = target_norm(lm.model), None
    dim = lm.model.get_input_embeddings().weight.shape[1]
    return LatentMapper(norm, map_matrix(kind, dim, w_a, args.seed), lm.device, lm.dtype)


def decode_settings(max_new_tokens: int, greedy: bool, sampling: dict) -> DecodeSettings:
    """The engine's decode settings; unset knobs (greedy) keep DecodeSettings' own off-values."""
    knobs = {k: v for k, v in sampling.items() if v is not None}
    return DecodeSettings(max_new_tokens=max_new_tokens, greedy=greedy, **knobs)


def _check_controls(args: argparse.Namespace, control: str | None) -> None:
    """Controls are latent_mas cells on the reference backend; say so before anything loads."""
    if control is not None and args.method != "latent_mas":
        raise RunConfigError(f"controls ({control}) apply to --method latent_mas only, not {args.method}")
    if control is not None and args.backend != "hf":
        raise RunConfigError(f"controls ({control}) run on --backend hf only: the vLLM hand-off rebuilds the full "
                             f"latent_mas memory and would silently drop the control")
    if not 0.0 <= args.keep_fraction <= 1.0:
        raise RunConfigError(f"--keep-fraction must be in [0, 1], got {args.keep_fraction}")
    if args.decode_graph != "eager" and args.backend != "hf":
        raise RunConfigError(f"--decode-graph {args.decode_graph} is an HF-backend option; vLLM runs its own graphs")


def _cell_spec(args: argparse.Namespace, task, topo, mapper_kind: str, control: str | None,
               sampling: dict) -> CellSpec:
    """What identifies this shard's records (its hash guards resume)."""
    from latentmas.engine.models import model_name_of

    method = args.method
    is_latent = method == "latent_mas"
    uses_w_a = is_latent and mapper_kind in ("ridge", "random_spectrum")
    return CellSpec(
        model=args.model_name or model_name_of(args.model), task=task.name, method=method,
        arch=None if method == "baseline" else topo.name,
        latent_steps=args.latent_steps if is_latent else None, realign=mapper_kind == "ridge" if is_latent else None,
        memory=args.memory if is_latent else None, seed=args.seed, greedy=args.greedy, **sampling,
        max_new_tokens=args.max_new_tokens,
        agent_max_new_tokens=args.agent_max_new_tokens if method == "text_mas" else None, think=args.think,
        dtype=args.dtype, ridge_lambda=args.ridge_lambda if uses_w_a else None,
        prompt_version=task.prompt_id(args.prompt_style), chat_template=args.chat_template,
        topology_digest=topo.digest, n=args.n, control=control, backend=args.backend,
        decode_graph=args.decode_graph,
    )


def _pending(out: Path, mine: list[dict], cfg_hash: str) -> list[dict]:
    """The shard's samples not yet in ``out``; refuse a file that holds another configuration's records."""
    done_records = repair(out)
    for rec in done_records:
        if rec.get("config_hash") != cfg_hash:
            raise RunConfigError(
                f"{out} holds records of another configuration (config_hash {rec.get('config_hash')} vs {cfg_hash}, "
                f"sample {rec.get('sample_id')}); move it away or choose another --out. Nothing was changed.")
    done_ids = {r["sample_id"] for r in done_records}
    return [r for r in mine if r["id"] not in done_ids]


def _method_settings(args: argparse.Namespace, sampling: dict) -> MethodSettings:
    is_latent = args.method == "latent_mas"
    return MethodSettings(
        method=args.method, latent_steps=args.latent_steps if is_latent else 0, memory=args.memory,
        decode=decode_settings(args.max_new_tokens, args.greedy, sampling),
        agent_max_new_tokens=args.agent_max_new_tokens, think=args.think, trace=args.trace,
        control=MemoryControl(transfer=not args.no_transfer, scope=args.memory_scope,
                              keep_fraction=args.keep_fraction, keep_rule=args.keep_rule),
        single_matched=args.single_matched,
    )


def _record_maker(args: argparse.Namespace, spec: CellSpec, cfg_hash: str, sampling_source, records: list[dict],
                  lm, backend):
    """``make(sample_input, sample_output, dataset_row) -> record``: the fields every record of the shard shares,
    computed once."""
    import transformers

    versions = {"latentmas": __version__, "torch": torch.__version__, "python": platform.python_version(),
                "transformers": transformers.__version__}
    device_desc = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else f"cpu ({platform.machine()})"
    if lm.linear_kernel != "aten":  # the kernel changes numbers by reduction order only: named, not hashed
        device_desc += f", {lm.linear_kernel} linears"
    index_of = {r["id"]: i for i, r in enumerate(records)}
    base = {k: v for k, v in asdict(spec).items() if k not in {"topology_digest", "n"}}

    def make(s: SampleInput, o: SampleOutput, rec: dict) -> dict:
        prompt = sum(a["input_tokens"] for a in o.agents)
        latent = sum(a["latent_steps"] for a in o.agents)
        generated = sum(a["generated_tokens"] for a in o.agents)
        inherited = o.agents[-1].get("memory") if o.agents else None
        return {
            "schema": RECORD_SCHEMA, "config_hash": cfg_hash, **base, "sampling_source": sampling_source,
            "sample_id": s.sample_id,
            "index": index_of[s.sample_id], "status": "failed" if o.error else "ok", "error": o.error,
            "final_text": o.final_text, "gold": rec["gold"], "agents": o.agents,
            "tokens": {"prompt": prompt, "latent": latent, "generated": generated,
                       "total": prompt + latent + generated},
            "wall_s": round(sum(a["wall_s"] for a in o.agents), 6), "peak_mem_mb": round(_peak_mem_mb(lm.device), 1),
            "device": device_desc, "batch_size": args.batch_size, "versions": versions,
            **({"question": s.question} if args.trace != "none" else {}),
            "kept_cache_bytes": None if inherited is None else inherited["kept_bytes"],
            "vllm": backend.describe(),
        }

    return make


def run(args: argparse.Namespace) -> int:
    from latentmas.engine.models import effective_sampling, pinned_dtype_name
    from latentmas.engine.topology import load_topology
    from latentmas.eval.tasks import get_task
    from latentmas.progress import StepReporter, bar

    shard, n_shards = parse_shard(args.shard)
    args.dtype = pinned_dtype_name(args.dtype, args.device)
    if args.batch_size < 1:
        raise RunConfigError("--batch-size must be >= 1")
    if args.latent_steps < 0:
        raise RunConfigError("--latent-steps must be >= 0")
    task = get_task(args.task)
    records = _load_records(args)
    n_total = len(records) if args.n is None else min(args.n, len(records))
    mine = [records[i] for i in shard_slice(n_total, shard, n_shards)]

    is_latent = args.method == "latent_mas"
    mapper_kind = resolve_mapper(args)
    control = control_name(args.no_transfer, args.single_matched, mapper_kind, args.keep_fraction, args.keep_rule,
                           args.memory_scope)
    _check_controls(args, control)
    topo = load_topology("single" if args.method == "baseline" else args.arch)
    if args.greedy:
        sampling, sampling_source = dict.fromkeys(SAMPLING_KNOBS), None
    else:
        sampling, sampling_source = effective_sampling(args.model, {k: getattr(args, k) for k in SAMPLING_KNOBS})
    spec = _cell_spec(args, task, topo, mapper_kind, control, sampling)
    cfg_hash = spec.config_hash()
    out = Path(args.out)
    todo = _pending(out, mine, cfg_hash)
    log.info("%s: %d samples in shard %d/%d, %d already done, %d to run", out, len(mine), shard, n_shards,
             len(mine) - len(todo), len(todo))
    if not todo:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.touch()
        return 0

    backend = open_backend(args, run_with_backoff)
    lm = backend.lm
    mapper = build_mapper(lm, args, mapper_kind) if is_latent else None
    settings = _method_settings(args, sampling)
    make_record = _record_maker(args, spec, cfg_hash, sampling_source, records, lm, backend)
    by_id = {r["id"]: r for r in todo}

    def to_input(rec: dict) -> SampleInput:
        return SampleInput(rec["id"], task.user_prompt(rec, args.prompt_style), task.answer_instruction,
                           sample_seed(args.seed, rec["id"]))

    samples_bar = bar(total=len(todo), desc=f"{task.name}/{args.method}", unit="sample")
    steps = StepReporter(args.latent_steps if is_latent else 0, args.max_new_tokens)
    with RecordWriter(out) as writer:
        def on_done(batch: list[SampleInput], outs: list[SampleOutput]) -> None:
            for s, o in zip(batch, outs):
                record = make_record(s, o, by_id[s.sample_id])
                check(record, RECORD_JSON_SCHEMA)  # ~0.1 ms: a record the scorer would reject is never written
                writer.write(record)
            samples_bar.update(len(batch))

        t0 = time.perf_counter()
        backend.run_shard(topo, [to_input(r) for r in todo], settings, mapper, on_done, progress=steps)
        samples_bar.close()
    log.info("%s: %d samples in %.1f s", out, len(todo), time.perf_counter() - t0)
    return 0


def add_vllm_options(ap: argparse.ArgumentParser) -> None:
    """Layout of the vLLM engine (--backend vllm only; placement, so not part of the config hash). Defaults: the
    config schema's ``vllm`` block (one source, :func:`latentmas.pipeline.defaults.vllm_defaults`)."""
    d = vllm_defaults()
    g = ap.add_argument_group("vLLM layout (--backend vllm)")
    g.add_argument("--vllm-gpu-memory-utilization", type=float, default=d["gpu_memory_utilization"],
                   help="share of the GPU vLLM may take; leave room for the HF model when they share one GPU")
    g.add_argument("--vllm-tensor-parallel-size", type=int, default=d["tensor_parallel_size"])
    g.add_argument("--vllm-max-model-len", type=int, default=d["max_model_len"], help="default: the model's own")
    g.add_argument("--vllm-cuda-visible-devices", default=d["cuda_visible_devices"],
                   help="GPUs of the vLLM engine only, e.g. 1 (the HF model then uses --device cuda:0)")
    g.add_argument("--vllm-prefix-caching", action=argparse.BooleanOptionalAction, default=d["prefix_caching"])
    g.add_argument("--vllm-cpu-kv-cache-gb", type=int, default=d["cpu_kv_cache_gb"],
                   help="VLLM_CPU_KVCACHE_SPACE on CPU machines")


def open_backend(args: argparse.Namespace, backoff):
    """The backend of this run: the HF model loaded, or the vLLM engine started (checks run first)."""
    if args.backend == "hf":
        from latentmas.engine.backends.hf import HFBackend
        from latentmas.engine.models import load_model

        lm = load_model(args.model, dtype=args.dtype, device=args.device, chat_template=args.chat_template,
                        decode_graph=args.decode_graph, linear_kernel=args.linear_kernel)
        return HFBackend(lm, args.batch_size, backoff)
    from latentmas.engine.backends import vllm as vb

    options = vb.VLLMOptions(
        gpu_memory_utilization=args.vllm_gpu_memory_utilization, tensor_parallel_size=args.vllm_tensor_parallel_size,
        enable_prefix_caching=args.vllm_prefix_caching, max_model_len=args.vllm_max_model_len,
        cuda_visible_devices=args.vllm_cuda_visible_devices, cpu_kv_cache_gb=args.vllm_cpu_kv_cache_gb)
    return vb.open_backend(args.model, args.method, args.memory if args.method == "latent_mas" else None,
                           args.dtype, args.device, args.chat_template, options, args.batch_size, backoff,
                           linear_kernel=args.linear_kernel)
