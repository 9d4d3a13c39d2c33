"""The one set of run defaults: what a pipeline config leaves unset is what ``latentmas run`` assumes.

Why a module: ``latentmas run`` used to carry its own defaults (sampling, batch 1) that differed from the config
schema's (greedy, batch 4), so a shard run by hand was not the shard the pipeline ran. Now the schema's ``decoding``
defaults (``latentmas/schemas/config.schema.yaml``) are read here, and both the config loader
(:mod:`latentmas.pipeline.experiment`) and the runner's argparse (:mod:`latentmas.pipeline.runner`) take their
defaults from this module. The few defaults the schema cannot carry (the latent lists, whose sub-schema is also used
for per-model overrides) are defined here.
"""
from __future__ import annotations

from functools import lru_cache

import yaml

from latentmas.contracts import CONFIG_SCHEMA

# The schema cannot carry these as `default`s: the same sub-schema is used for per-model overrides, which must stay
# empty where the user left them empty so the top-level values show through.
LATENT_DEFAULTS = {"steps": [10], "realign": [True], "memory": ["all"]}
RIDGE_LAMBDA = 1e-5
ARCH = "sequential"
SEED = 0
PROMPT_STYLE = "ours"
# Sampling knobs that default to the model's generation_config (None = "not overridden").
SAMPLING_KNOBS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@lru_cache(maxsize=None)
def _schema() -> dict:
    return yaml.safe_load(CONFIG_SCHEMA.read_text())


def decoding_defaults() -> dict:
    """``decoding.*`` defaults exactly as the config schema states them."""
    props = _schema()["properties"]["decoding"]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def run_defaults() -> dict:
    """argparse ``dest`` -> default for every ``latentmas run`` option that a pipeline config also sets."""
    d = decoding_defaults()
    out = {k: d[k] for k in ("greedy", "batch_size", "max_new_tokens", "agent_max_new_tokens", "think")}
    out.update({k: d.get(k) for k in SAMPLING_KNOBS})
    out.update(latent_steps=LATENT_DEFAULTS["steps"][0], realign=LATENT_DEFAULTS["realign"][0],
               memory=LATENT_DEFAULTS["memory"][0], ridge_lambda=RIDGE_LAMBDA, arch=ARCH, seed=SEED,
               prompt_style=PROMPT_STYLE)
    return out


def vllm_defaults() -> dict:
    """``vllm.*`` layout defaults exactly as the config schema states them (``latentmas run --vllm-*`` uses these;
    ``VLLMOptions``' own field defaults are checked equal to them by tests/test_fidelity.py)."""
    props = _schema()["properties"]["vllm"]["properties"]
    return {k: v["default"] for k, v in props.items()}
