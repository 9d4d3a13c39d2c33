"""Shared fixtures: tiny random-weight models of several architectures, built once per session, offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REAL_MODEL = Path(os.environ.get("LATENTMAS_REAL_MODEL", REPO / "resources" / "models" / "qwen2.5-coder-0.5b"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder path of a tiny model per architecture: tiny_model_dir("qwen2")."""
    from latentmas.engine.tiny import make_tiny_model

    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = make_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return made[arch]

    return get


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from latentmas.engine.models import load_model

    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_model(str(tiny_model_dir(arch)), dtype="float32", device="cpu")
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def real_lm():
    """The real Qwen2.5-Coder-0.5B (fetched by `make demo` / `latentmas fetch-model`); skipped when absent."""
    if not (REAL_MODEL / "config.json").exists():
        pytest.skip(f"real model not present at {REAL_MODEL} (run `make model`); skipping real-model test")
    from latentmas.engine.models import load_model

    return load_model(str(REAL_MODEL), dtype="float32", device="cpu")
