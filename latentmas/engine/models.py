"""Load any decoder-only causal LM that transformers supports, with an explicit dtype/device policy.

Why a module of its own: the original code asserted "qwen" in the model name. Nothing here looks at names: the
architecture comes from ``config.json``, the prompt format from the tokenizer's chat template, the decoder stack from
``model.base_model``. A model without a chat template is an error unless the config names a fallback template, so a
run never silently uses a format the model was not trained on.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentmas.engine.packed_linear import cpu_supports, pack_linears, resolve_linear_kernel

log = logging.getLogger(__name__)

# Fallback chat templates a user may name explicitly (config key ``chat_template``). Our own minimal jinja.
FALLBACK_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "plain": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
        "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\n\n"
        "{% else %}Answer: {{ m['content'] }}\n\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}Answer:{% endif %}"
    ),
}


# What transformers' ``generate`` assumes for a knob that neither the caller nor the model's generation_config sets
# (transformers GenerationConfig._get_default_generation_params; min_p has no default there, i.e. off). The original
# sampled with ``model.generate(temperature=..., top_p=..., do_sample=True)``, so its top_k came from here or from the
# model's generation_config.json.
SAMPLING_FALLBACKS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "min_p": 0.0, "repetition_penalty": 1.0}
THINK_MODES = ("on", "off", "model", "tag")
THINK_TAG = "<think>"


def generation_config_sampling(path: str) -> dict[str, Any]:
    """The sampling knobs a model folder's ``generation_config.json`` sets (absent/None keys left out)."""
    f = Path(path) / "generation_config.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{f}: not valid JSON ({exc})") from exc
    return {k: data[k] for k in SAMPLING_FALLBACKS if data.get(k) is not None}


def effective_sampling(path: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Sampling knobs for a run: explicit override > the model's generation_config > transformers' fallback.

    Returns the values and, per knob, where it came from (``config`` | ``generation_config`` | ``default``), so a
    record says both what was used and why.
    """
    model_gen = generation_config_sampling(path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for knob, fallback in SAMPLING_FALLBACKS.items():
        if overrides.get(knob) is not None:
            values[knob], sources[knob] = overrides[knob], "config"
        elif knob in model_gen:
            values[knob], sources[knob] = model_gen[knob], "generation_config"
        else:
            values[knob], sources[knob] = fallback, "default"
    values["top_k"] = int(values["top_k"])
    for knob in ("temperature", "top_p", "min_p", "repetition_penalty"):
        values[knob] = float(values[knob])
    return values, sources


class ModelLoadError(RuntimeError):
    """A model folder/spec cannot be used; the message names the path and what is wrong."""


class ChatTemplateError(ModelLoadError):
    pass


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: str
    name: str
    device: torch.device
    dtype: torch.dtype
    decode_graph: str = "eager"  # engine/static_decode.py DECODE_GRAPHS: how text decode steps run
    linear_kernel: str = "aten"  # engine/packed_linear.py: "onednn" once the linears were packed (resolved name)

    @property
    def decoder(self):
        """The transformer stack without the LM head: latent steps need hidden states, never vocabulary logits."""
        return self.model.base_model

    @property
    def eos_token_ids(self) -> list[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for src in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if src is None:
                continue
            ids.update(src if isinstance(src, (list, tuple)) else [src])
        # Chat models end a turn with an end-of-turn token that may differ from the EOS token.
        for special in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(ids)

    @property
    def pad_token_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        if pid is None:
            pid = self.eos_token_ids[0]
        return int(pid)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return dev


# What ``dtype: auto`` means per device type: the one place to switch the CPU default (measurements and the
# trade-off in docs/ENGINE.md, "Compute dtype"; on an AMX-BF16 CPU bf16 is ~2.4x faster at batch 8).
AUTO_DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` = :data:`AUTO_DTYPE` for the device type (float32 elsewhere); ``fastest`` = bf16 where the hardware
    computes it natively (a CUDA GPU of compute capability >= 8.0; a CPU with AMX-BF16 or AVX512-BF16), float32
    elsewhere, so one config runs at its best on an AMX node and on an AVX2-only one (docs/ENGINE.md, "Compute
    dtype")."""
    if dtype == "auto":
        return AUTO_DTYPE.get(device.type, torch.float32)
    if dtype == "fastest":
        native = ((device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False))
                  or (device.type == "cpu" and cpu_has_native_bf16()))
        return torch.bfloat16 if native else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, fastest, float32, bfloat16 or float16")
    return table[dtype]


def cpu_has_native_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16 present. Without either, torch emulates bf16 and it is several times slower than
    float32, the opposite of the AMX machine the demo's bf16 was chosen on (numbers: docs/ENGINE.md, "Compute
    dtype")."""
    return cpu_supports("_is_amx_tile_supported") or cpu_supports("_is_avx512_bf16_supported")


def pinned_dtype_name(dtype: str, device: str) -> str:
    """``fastest`` -> the dtype it resolves to on this machine; any other spelling unchanged. Records and their
    config hash name what was computed, so a shard resumed on a node of another CPU kind is refused, not mixed.
    (``auto`` stays as written: its meaning is fixed per device type, and older shards hash it that way.)"""
    if dtype != "fastest":
        return dtype
    return dtype_name(resolve_dtype(dtype, resolve_device(device)))


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``: the spelling configs, records and bench rows use."""
    return str(dtype).removeprefix("torch.")


def _is_local_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def model_name_of(path: str) -> str:
    p = Path(path)
    src = p / "latentmas_source.json"
    if src.exists():
        try:
            return json.loads(src.read_text()).get("name") or p.name
        except json.JSONDecodeError:
            pass
    return p.name if p.exists() else path


def load_model(
    path: str,
    dtype: str = "auto",
    device: str = "auto",
    chat_template: str | None = None,
    attn_implementation: str | None = "sdpa",
    require_chat_template: bool = True,
    decode_graph: str = "eager",
    linear_kernel: str = "auto",
) -> LoadedModel:
    """Load a model folder (or a Hub id, online) in eval mode.

    ``chat_template``: None = the tokenizer's own (error if it has none); a key of FALLBACK_TEMPLATES; or a jinja
    string. GGUF files are converted to a folder first by ``latentmas fetch-model``, never loaded raw at run time
    (conversion takes a minute; doing it per job would waste cluster time). On a CPU, ``sdpa`` means transformers'
    SDPA for prompts and :mod:`latentmas.engine.attention` for single-query steps. ``decode_graph``: eager (the exact
    reference loop), static or compiled (``torch.compile``; CUDA graphs on a GPU): docs/ENGINE.md, "Decode graphs".
    ``linear_kernel``: auto | onednn | aten — whether the linears run through weights oneDNN packed once
    (:mod:`latentmas.engine.packed_linear`; auto = on x86-64 CPUs where measured faster, never under
    ``decode_graph: compiled``).
    """
    from latentmas.engine.static_decode import DECODE_GRAPHS

    if decode_graph not in DECODE_GRAPHS:
        raise ModelLoadError(f"unknown decode graph {decode_graph!r}; use one of {', '.join(DECODE_GRAPHS)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if p.suffix == ".gguf":
        raise ModelLoadError(f"{path}: convert GGUF files once with `latentmas fetch-model gguf:{path} --out DIR`")
    if not _is_local_model_dir(p):
        if p.exists() or "/" not in path or path.startswith((".", "/")):
            raise ModelLoadError(f"{path}: not a model folder (no config.json) and not a Hub id")
        log.info("%s is not a local folder: treating it as a Hub id", path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kernel = _linear_kernel_for(linear_kernel, dev, dt, decode_graph)
    if dev.type == "cpu" and dt == torch.bfloat16 and not cpu_has_native_bf16():
        log.warning("dtype bfloat16 on a CPU without AMX-BF16 or AVX512-BF16: torch emulates it and it runs several "
                    "times slower than float32 here (docs/ENGINE.md, \"Compute dtype\"); set dtype: fastest or float32 "
                    "(models.<name>.dtype, --dtype) on this machine")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        kwargs: dict[str, Any] = {"dtype": dt}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot load model/tokenizer: {exc}") from exc
    if chat_template is not None:
        tok.chat_template = FALLBACK_TEMPLATES.get(chat_template, chat_template)
    elif require_chat_template and not getattr(tok, "chat_template", None):
        raise ChatTemplateError(
            f"{path}: the tokenizer has no chat template. Set `chat_template:` for this model in the config "
            f"(models.<name>.chat_template; `latentmas run --chat-template`), one of {sorted(FALLBACK_TEMPLATES)} or "
            f"a jinja string, to use an explicit fallback."
        )
    model.to(dev)
    model.eval()
    if attn_implementation == "sdpa" and dev.type == "cpu":  # one-query steps off the CPU flash kernel (attention.py)
        from latentmas.engine import attention

        model.set_attn_implementation(attention.register())
    if kernel == "onednn":
        pack_linears(model)
    return LoadedModel(model=model, tokenizer=tok, path=str(path), name=model_name_of(path), device=dev, dtype=dt,
                       decode_graph=decode_graph, linear_kernel=kernel)


def _linear_kernel_for(kernel: str, device: torch.device, dtype: torch.dtype, decode_graph: str) -> str:
    """The resolved linear kernel, or a ModelLoadError naming the bad setting."""
    try:
        return resolve_linear_kernel(kernel, device, dtype, decode_graph)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None


def render_chat(tok, messages: list[dict[str, str]], think: bool | str | None = None) -> str:
    """Render one agent turn (system + user) and open the assistant turn.

    ``think`` (see :data:`THINK_MODES`): ``on``/``off`` (or True/False) pass ``enable_thinking`` to the template;
    ``model``/None leave the template's default; ``tag`` renders with the default and appends a literal ``<think>``
    to the opened assistant turn, which is what the original LatentMAS ``--think`` flag did.
    """
    mode = {True: "on", False: "off", None: "model"}.get(think, think) if not isinstance(think, str) else think
    if mode not in THINK_MODES:
        raise ValueError(f"unknown think mode {think!r}; use one of {', '.join(THINK_MODES)}")
    extra = {"enable_thinking": mode == "on"} if mode in ("on", "off") else {}
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
    return text + THINK_TAG if mode == "tag" else text


def encode(tok, text: str) -> list[int]:
    """Token ids of already-templated text (the template carries any BOS; never add special tokens twice)."""
    return list(tok(text, add_special_tokens=False)["input_ids"])
