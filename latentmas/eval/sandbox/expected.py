"""Expected outputs: the canonical solution run through the same sandbox once per problem, cached.

Cached in memory and, if `$LATENTMAS_CACHE` is set (or `SandboxLimits.expected_cache_dir`), on disk under
`evalplus_expected/<sha256 of the problem>.json` (written atomically; entries whose bytes do not match their
digest are recomputed).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .limits import CACHE_FORMAT, DATASETS, HASH_SEED, SandboxError, SandboxLimits, cache_dir
from .supervisor import run_child
from .wire import _foreign, _safe_unpickle


@dataclass
class _ExpOut:
    h: str
    n: int
    b: bytes | None  # the child's pickle bytes when small enough
    c: str | None  # ==-canonical digest (None when too big)
    nan: bool
    fl: bool  # evalplus is_floats(exp)
    top: str | None
    dt: float
    _value: Any = dataclasses.field(default=None, repr=False)
    _decoded: bool = dataclasses.field(default=False, repr=False)

    def value(self) -> Any:
        if not self._decoded:
            v = _safe_unpickle(self.b)
            self._value = _foreign(v, self.top) if self.top else v
            self._decoded = True
        return self._value


@dataclass
class _Expected:
    key: str
    task_id: str
    n_base: int
    outputs: list[_ExpOut]
    ser_s: float
    report_bytes: int


_MEM_CACHE: dict[str, _Expected] = {}
_MEM_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}


def clear_expected_cache() -> None:
    """Forget the in-memory expected outputs (the on-disk cache is left alone)."""
    with _MEM_LOCK:
        _MEM_CACHE.clear()


def _problem_inputs(problem: dict, dataset: str) -> tuple[list, list]:
    base = problem["base_input"]
    plus = problem["plus_input"]
    # MBPP+ v0.2.0 Mbpp/793 stores plus_input as {} (evalplus iterates it as an empty sequence)
    base = list(base) if not isinstance(base, list) else base
    plus = list(plus) if not isinstance(plus, list) else plus
    if dataset == "mbpp":
        from evalplus.data.mbpp import mbpp_deserialize_inputs

        base = mbpp_deserialize_inputs(problem["task_id"], base)
        plus = mbpp_deserialize_inputs(problem["task_id"], plus)
    return list(base), list(plus)


def _problem_key(problem: dict, dataset: str) -> str:
    ident = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "python": list(sys.version_info[:2]),
        "hashseed": HASH_SEED,
        **{k: problem.get(k) for k in ("task_id", "entry_point", "prompt", "canonical_solution", "base_input",
                                       "plus_input")},
    }
    blob = json.dumps(ident, sort_keys=True, default=repr).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()


def _exp_to_json(e: _Expected) -> dict:
    return {
        "format": CACHE_FORMAT, "key": e.key, "task_id": e.task_id, "n_base": e.n_base, "ser_s": e.ser_s,
        "report_bytes": e.report_bytes,
        "outputs": [
            {"h": o.h, "n": o.n, "b": None if o.b is None else base64.b64encode(o.b).decode("ascii"), "c": o.c,
             "nan": o.nan, "fl": o.fl, "top": o.top, "dt": o.dt}
            for o in e.outputs
        ],
    }


def _exp_from_json(d: dict, key: str, n_inputs: int) -> _Expected | None:
    try:
        if d.get("format") != CACHE_FORMAT or d.get("key") != key or len(d["outputs"]) != n_inputs:
            return None
        outs = []
        for o in d["outputs"]:
            b = None if o["b"] is None else base64.b64decode(o["b"], validate=True)
            if b is not None and (len(b) != int(o["n"]) or hashlib.sha256(b).hexdigest() != o["h"]):
                return None
            outs.append(_ExpOut(h=str(o["h"]), n=int(o["n"]), b=b, c=o["c"], nan=bool(o["nan"]), fl=bool(o["fl"]),
                                top=o["top"], dt=float(o["dt"])))
        return _Expected(key=key, task_id=str(d["task_id"]), n_base=int(d["n_base"]), outputs=outs,
                         ser_s=float(d["ser_s"]), report_bytes=int(d["report_bytes"]))
    except (KeyError, TypeError, ValueError):
        return None


def _validate_problem(problem: Any, dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if not isinstance(problem, dict):
        raise ValueError("problem must be an evalplus problem dict")
    missing = [k for k in ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input",
                           "atol") if k not in problem]
    if missing:
        raise ValueError(f"problem {problem.get('task_id')!r} lacks {missing}")


def expected_outputs(problem: dict, dataset: str, limits: SandboxLimits | None = None) -> _Expected:
    """Expected outputs of a problem (the canonical solution run in the sandbox), cached.  Raises SandboxError
    if the canonical solution fails."""
    _validate_problem(problem, dataset)
    lim = (limits or SandboxLimits()).resolved()
    key = _problem_key(problem, dataset)
    with _MEM_LOCK:
        hit = _MEM_CACHE.get(key)
        if hit is not None:
            return hit
        klock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with klock:
        with _MEM_LOCK:
            hit = _MEM_CACHE.get(key)
        if hit is not None:
            return hit
        base, plus = _problem_inputs(problem, dataset)
        n = len(base) + len(plus)
        cdir = cache_dir(lim)
        path = os.path.join(cdir, f"{key}.json") if cdir else None
        exp = None
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    exp = _exp_from_json(json.load(f), key, n)
            except (OSError, ValueError):
                exp = None
        if exp is None:
            exp = _compute_expected(problem, dataset, lim, key, base, plus)
            if path:
                try:
                    os.makedirs(cdir, exist_ok=True)
                    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
                    with open(tmp, "w", encoding="utf-8") as f:
                        json.dump(_exp_to_json(exp), f)
                    os.replace(tmp, path)
                except OSError:
                    pass  # the cache is an optimisation
        with _MEM_LOCK:
            _MEM_CACHE[key] = exp
        return exp


def _compute_expected(problem: dict, dataset: str, lim: SandboxLimits, key: str, base: list, plus: list) -> _Expected:
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS

    # The reference run gets default resource limits whatever the candidate's are: the cached result must not
    # depend on which check happened to compute it first.
    lim = SandboxLimits(isolation=lim.isolation, canonical_wall_s=lim.canonical_wall_s,
                        allow_ctypes=lim.allow_ctypes, expected_cache_dir=lim.expected_cache_dir).resolved()

    inputs = base + plus
    ep = problem["entry_point"]
    outs: list[_ExpOut | None] = [None] * len(inputs)
    problems: list[str] = []

    def on_msg(msg: dict) -> str | None:
        t = msg.get("t")
        if t == "o":
            i = msg["i"]
            if "u" in msg:
                problems.append(f"canonical output #{i} is not serialisable: {msg['u']}")
                return "stop"
            b = base64.b64decode(msg["b"], validate=True) if "b" in msg else None
            if b is not None and (len(b) != int(msg["n"]) or hashlib.sha256(b).hexdigest() != msg["h"]):
                problems.append(f"canonical output #{i} arrived corrupted")
                return "stop"
            outs[i] = _ExpOut(h=msg["h"], n=int(msg["n"]), b=b, c=msg.get("c"), nan=bool(msg.get("nan", False)),
                              fl=bool(msg.get("fl", False)), top=msg.get("top"), dt=float(msg["dt"]))
        elif t == "x":
            problems.append(f"canonical solution raised on input #{msg['i']}: {msg.get('e')}: {msg.get('m')}")
            return "stop"
        return None

    run = run_child(
        mode="canonical",
        code=problem["prompt"] + problem["canonical_solution"],
        entry_point=ep,
        inputs=inputs,
        time_limits=None,
        not_none=dataset == "mbpp" and ep in MBPP_OUTPUT_NOT_NONE_TASKS,
        lim=lim,
        wall_s=lim.canonical_wall_s,
        report_cap=2 << 30,
        on_msg=on_msg,
    )
    if problems:
        raise SandboxError(f"{problem['task_id']}: {problems[0]}")
    if not run.done or any(o is None for o in outs):
        raise SandboxError(f"{problem['task_id']}: canonical solution did not complete in the sandbox: "
                           f"{run.status}: {run.detail}")
    return _Expected(key=key, task_id=problem["task_id"], n_base=len(base), outputs=outs,  # type: ignore[arg-type]
                     ser_s=run.ser_s, report_bytes=run.report_bytes)
