"""The vLLM backend: stock vLLM decodes the text, transformers keeps the latent rollout.

* baseline/text_mas: per agent, one ``LLM.generate`` over all samples of the shard (``prompt_token_ids``: our own
  templated ids, so both backends see identical prompts);
* latent_mas: the non-final agents run on HF in batches (:func:`handoff.latent_prefix`), then the final agent is
  one ``LLM.generate`` over ``prompt_embeds`` = handed-over memory + its own prompt embeddings.

Same decoding meaning as the HF loop: greedy = temperature 0; sampling maps temperature/top_p (and top_k, min_p,
repetition_penalty when the decode settings carry them); stop at any of the model's EOS/end-of-turn ids; the
generated tokens are the ids before the stop token, decoded with the same tokenizer. Per-agent ``wall_s`` is the
call's wall time divided by the number of samples in it. A request vLLM rejects fails that sample with the reason.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from latentmas.engine.backends import VLLM_EXTRA, BackendError
from latentmas.engine.backends.handoff import latent_prefix, prompt_embeds
from latentmas.engine.methods import SampleOutput, _agent_record
from latentmas.engine.models import encode, render_chat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VLLMOptions:
    """GPU/CPU layout of the vLLM engine (placement only: not part of a cell's identity)."""

    gpu_memory_utilization: float = 0.5  # share of the GPU vLLM may take (the HF model shares it on one GPU)
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None = the model's own
    cuda_visible_devices: str | None = None  # GPUs for the vLLM engine only, e.g. "1" (HF then on cuda:0)
    cpu_kv_cache_gb: int = 2  # VLLM_CPU_KVCACHE_SPACE on CPU machines


def import_vllm():
    """``import vllm`` or one clear message saying what to install."""
    try:
        import vllm
    except ImportError as exc:
        raise BackendError(f"backend vllm needs vLLM, which is not installed ({exc}). On CPU: "
                           f"pip install -e '.[{VLLM_EXTRA}]' then pip uninstall -y torchvision torchaudio "
                           f"torchcodec (make install does both); on GPUs: workflow/envs/vllm-gpu.yaml") from None
    except RuntimeError as exc:
        if "torchvision" in str(exc):
            raise BackendError(f"vLLM fails to import ({exc}): a torchvision that does not match torch is "
                               f"installed; pip uninstall -y torchvision torchaudio torchcodec") from None
        raise
    return vllm


def _sliding_window_in_use(cfg: dict) -> bool:
    types = cfg.get("layer_types") or []
    if any("sliding" in str(t) for t in types):
        return True
    if "use_sliding_window" in cfg:
        return bool(cfg["use_sliding_window"]) and cfg.get("sliding_window") is not None
    return cfg.get("sliding_window") is not None


def check_supported(model_path: str, method: str, memory: str | None) -> None:
    """Refuse, before anything is loaded, what the vLLM path cannot compute like the HF reference."""
    if method == "latent_mas" and memory not in (None, "all"):
        raise BackendError(f"backend vllm: latent_mas with memory {memory!r} is not equivalent to the HF hand-off "
                           f"(the kept positions were computed on dropped context, at other positions; "
                           f"docs/ENGINE.md). Use memory: all or backend: hf")
    cfg_file = Path(model_path) / "config.json"
    if not cfg_file.exists():
        return  # a Hub id: vLLM resolves it and fails clearly itself
    cfg = json.loads(cfg_file.read_text())
    cfg = {**cfg.get("text_config", {}), **cfg}
    if _sliding_window_in_use(cfg):
        raise BackendError(f"{model_path}: backend vllm does not serve sliding-window models (its window is "
                           f"counted over the rebuilt sequence, not over our cache's columns); use backend: hf")
    vllm = import_vllm()
    archs = cfg.get("architectures") or []
    supported = vllm.ModelRegistry.get_supported_archs()
    if not any(a in supported for a in archs):
        raise BackendError(f"{model_path}: vLLM {vllm.__version__} cannot load architecture {archs}; use backend: hf")


def _engine_env(options: VLLMOptions) -> dict:
    """Environment the engine processes must start with (the user's own VLLM_CPU_KVCACHE_SPACE wins)."""
    env = {} if "VLLM_CPU_KVCACHE_SPACE" in os.environ else {"VLLM_CPU_KVCACHE_SPACE": str(options.cpu_kv_cache_gb)}
    if options.cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = options.cuda_visible_devices
    return env


def open_engine(model_path: str, dtype: torch.dtype, options: VLLMOptions, prompt_embeds_on: bool,
                logprobs_mode: str | None = None, seed: int = 0):
    """Start the engine (60-150 s for a 0.5B on 2 CPU cores).

    Start it before the HF model touches CUDA: ``cuda_visible_devices`` is set only while vLLM spawns its engine
    processes (they keep it), then restored so the HF model in this process sees every GPU.
    """
    vllm = import_vllm()
    kwargs = dict(model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed,
                  enable_prompt_embeds=prompt_embeds_on, enable_prefix_caching=options.enable_prefix_caching,
                  tensor_parallel_size=options.tensor_parallel_size,
                  gpu_memory_utilization=options.gpu_memory_utilization)
    if options.max_model_len is not None:
        kwargs["max_model_len"] = options.max_model_len
    if not torch.cuda.is_available():
        kwargs["enforce_eager"] = True  # CPU: skip torch.compile warm-up (minutes on 2 cores)
    if logprobs_mode is not None:
        kwargs["logprobs_mode"] = logprobs_mode
    env = _engine_env(options)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return vllm.LLM(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one message naming the model
        raise BackendError(f"{model_path}: vLLM cannot load this model: {type(exc).__name__}: {exc}") from exc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tokenizer_only(path: str, dtype: torch.dtype, device: torch.device, chat_template: str | None):
    """A LoadedModel without weights (baseline/text_mas on vLLM never run the HF model): tokenizer, template, EOS."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer, GenerationConfig

    from latentmas.engine.models import FALLBACK_TEMPLATES, ChatTemplateError, LoadedModel, model_name_of

    tok = AutoTokenizer.from_pretrained(path)
    if chat_template is not None:
        tok.chat_template = FALLBACK_TEMPLATES.get(chat_template, chat_template)
    elif not getattr(tok, "chat_template", None):
        raise ChatTemplateError(f"{path}: the tokenizer has no chat template; set `chat_template:` for this model")
    try:
        gen = GenerationConfig.from_pretrained(path)
    except OSError:
        gen = None
    return LoadedModel(model=SimpleNamespace(generation_config=gen), tokenizer=tok, path=str(path),
                       name=model_name_of(path), device=device, dtype=dtype)


def open_backend(path: str, method: str, memory: str | None, dtype: str, device: str, chat_template: str | None,
                 options: VLLMOptions, batch_size: int, backoff, linear_kernel: str = "auto") -> "VLLMBackend":
    """Checks first (seconds), then the engine, then the HF model where latent_mas needs it (``linear_kernel``:
    how that model's linears run, engine/packed_linear.py)."""
    from latentmas.engine.models import load_model, resolve_device, resolve_dtype

    check_supported(path, method, memory)
    is_latent = method == "latent_mas"
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    llm = open_engine(path, dt, options, prompt_embeds_on=is_latent)
    if is_latent:
        lm = load_model(path, dtype=dtype, device=device, chat_template=chat_template, linear_kernel=linear_kernel)
    else:
        lm = tokenizer_only(path, dt, dev, chat_template)
    return VLLMBackend(lm, llm, options, batch_size, backoff)


def sampling_params(decode, max_tokens: int, stop_ids: list[int], seed: int | None):
    """Our DecodeSettings in vLLM's terms (fields absent from DecodeSettings keep vLLM's 'off' values)."""
    from vllm import SamplingParams

    kw = dict(max_tokens=max_tokens, stop_token_ids=list(stop_ids), detokenize=False,
              repetition_penalty=float(getattr(decode, "repetition_penalty", 1.0)))
    if decode.greedy:
        kw["temperature"] = 0.0
    else:
        kw.update(temperature=decode.temperature, top_p=decode.top_p, seed=seed,
                  top_k=int(getattr(decode, "top_k", 0)), min_p=float(getattr(decode, "min_p", 0.0)))
    return SamplingParams(**kw)


def _engine_dead_errors() -> tuple:
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # pragma: no cover - other vLLM layouts
        return ()
    return (EngineDeadError,)


def generate(llm, requests: list[dict], params: list, stop_ids: list[int]) -> list[list[int] | str]:
    """Generated ids per request (before the first stop id), or the reason that request failed.

    A call that raises is retried request by request so one bad request fails alone; a dead engine is re-raised
    (recording every sample as failed would make a resumed shard skip them).
    """
    if not requests:
        return []
    stop = set(stop_ids)
    try:
        outs = llm.generate(requests, params, use_tqdm=False)
    except _engine_dead_errors():
        raise
    except Exception as exc:  # noqa: BLE001 - vLLM rejects bad requests with several exception types
        if len(requests) == 1:
            return [f"vLLM request failed: {type(exc).__name__}: {exc}"]
        log.warning("vLLM call over %d requests failed (%s): retrying one by one", len(requests), exc)
        return [generate(llm, [r], [p], stop_ids)[0] for r, p in zip(requests, params)]
    results: list[list[int] | str] = []
    for o in outs:
        c = o.outputs[0] if o.outputs else None
        if c is None or c.finish_reason not in ("stop", "length"):
            results.append(f"vLLM request finished with {getattr(c, 'finish_reason', 'no output')!r}")
            continue
        ids = list(c.token_ids)
        cut = next((k for k, t in enumerate(ids) if t in stop), len(ids))
        results.append(ids[:cut])
    return results


def _seed(sample_seed: int, agent_index: int) -> int:
    return (sample_seed * 1_000_003 + agent_index) % (2**63 - 1)  # as methods._generators


class VLLMBackend:
    name = "vllm"

    def __init__(self, lm, llm, options: VLLMOptions, batch_size: int, backoff):
        self.lm = lm  # tokenizer always; the HF model only for latent_mas (see open_for_run)
        self.llm = llm
        self.options = options
        self.batch_size = batch_size
        self.backoff = backoff

    def run_shard(self, topo, samples, settings, mapper, on_done, progress=None) -> None:
        latent = settings.method == "latent_mas"
        outs: list[SampleOutput] = self._latent_prefix(topo, samples, settings, mapper) if latent else \
            [SampleOutput() for _ in samples]
        texts: list[dict[str, str]] = [{} for _ in samples]
        mode = {"baseline": "none", "text_mas": "text", "latent_mas": "latent"}[settings.method]
        stop_ids = self.lm.eos_token_ids
        tok = self.lm.tokenizer
        for a_idx, agent in enumerate(topo.agents):
            if latent and not agent.final:
                continue
            t0 = time.perf_counter()
            prompts = [encode(tok, render_chat(tok, topo.render(agent, s.question, s.answer_instruction, mode,
                                                                texts[i]), settings.think))
                       for i, s in enumerate(samples)]
            limit = settings.decode.max_new_tokens
            if not agent.final and settings.agent_max_new_tokens is not None:
                limit = settings.agent_max_new_tokens
            todo = [i for i, o in enumerate(outs) if o.error is None]
            requests = [{"prompt_embeds": prompt_embeds(self.lm, outs[i].memory, prompts[i])} if latent
                        else {"prompt_token_ids": prompts[i]} for i in todo]
            params = [sampling_params(settings.decode, limit, stop_ids, _seed(samples[i].seed, a_idx)) for i in todo]
            results = dict(zip(todo, generate(self.llm, requests, params, stop_ids)))
            wall = (time.perf_counter() - t0) / len(samples)
            for i, o in enumerate(outs):
                res = results.get(i, [])
                if isinstance(res, str):
                    o.error, res = f"agent {agent.name}: {res}", []
                text = tok.decode(res, skip_special_tokens=True)
                texts[i][agent.name] = text
                o.agents.append(_agent_record(agent.name, len(prompts[i]), 0, len(res), wall,
                                              text if settings.method == "text_mas" else None, None))
                if agent.final:
                    o.final_text = text
        for o in outs:
            if hasattr(o, "memory"):
                o.memory = None  # records never carry tensors
        on_done(samples, outs)

    def _latent_prefix(self, topo, samples, settings, mapper) -> list:
        got: dict[str, SampleOutput] = {}

        def collect(batch, batch_outs):
            got.update({s.sample_id: o for s, o in zip(batch, batch_outs)})

        def run_fn(batch):
            return latent_prefix(self.lm, topo, batch, settings, mapper)

        for start in range(0, len(samples), self.batch_size):
            self.backoff(run_fn, samples[start:start + self.batch_size], collect)
        return [got[s.sample_id] for s in samples]

    def describe(self) -> dict:
        """Layout and memory of the engine, for the record (the HF process's peak is the record's peak_mem_mb)."""
        info = {"version": import_vllm().__version__, **asdict(self.options), "engine_rss_mb": _children_rss_mb()}
        cache = getattr(getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None), "cache_config", None)
        blocks = getattr(cache, "num_gpu_blocks", None)
        if blocks:
            info["kv_cache_tokens"] = int(blocks) * int(cache.block_size)
        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory / 2**20
            info["gpu_budget_mb"] = round(self.options.gpu_memory_utilization * total, 1)
        return info


def _children_rss_mb() -> float | None:
    try:
        import psutil

        kids = psutil.Process().children(recursive=True)
        return round(sum(k.memory_info().rss for k in kids) / 2**20, 1)
    except Exception:  # noqa: BLE001 - accounting must never fail a run
        return None
