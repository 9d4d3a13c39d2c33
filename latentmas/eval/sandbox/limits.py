"""Public types of the sandbox: the verdict, the limits, the infrastructure error."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

DATASETS = ("humaneval", "mbpp")
CACHE_FORMAT = 1  # bump when the child's encoding or the cache layout changes
HASH_SEED = "0"
EXPECTED_VALUE_BYTES = 1 << 20  # expected outputs up to this size are kept as values (cache); bigger: digests


@dataclass(frozen=True)
class CodeVerdict:
    """Outcome of running one candidate solution against base + plus tests.

    status: "pass" | "failed_tests" | "timeout" | "memory" | "killed" | "error: <short msg>".
    detail: human-readable reason (which input failed and how, the blocked operation, the signal, ...).
    wall_s: wall-clock seconds of the candidate's sandboxed run (expected-output computation excluded).
    sandbox: the isolation mode the run used ("bwrap+seccomp" | "bwrap" | "namespaces" | "basic"; see
        isolation.py), "" when nothing ran (no code).
    """

    passed: bool
    status: str
    detail: str
    wall_s: float
    sandbox: str = ""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run.  None means "derive it the way evalplus does" (see `resolved`).

    wall_s: wall-clock limit of the whole run, enforced by the parent.  Default: evalplus's per-phase budget
        `min(timeout_per_phase_s, sum(per-input limits)) + 2` for base and for plus, plus `startup_s`, plus an
        allowance for serialising outputs (2x what the canonical run needed).
    cpu_s: RLIMIT_CPU (soft; hard = soft + 1).  Default: ceil(wall_s) + 1.
    memory_mb: RLIMIT_AS / RLIMIT_DATA / RLIMIT_STACK, set by evalplus's reliability_guard.  Default: evalplus's
        `query_maximum_memory_bytes()` (EVALPLUS_MAX_MEMORY_BYTES or 4 GiB, capped at physical RAM).
    max_output_bytes: stdout + stderr budget; more and the process group is killed (status "killed").
    file_size_mb: RLIMIT_FSIZE (and the size of the private tmpfs working directory when isolation is full).
    nofile: RLIMIT_NOFILE.   nproc: RLIMIT_NPROC (1 = no fork, no threads).
    min_time_limit / gt_time_limit_factor: evalplus's per-input limit max(min, factor * canonical time);
        None = evalplus.config defaults (1.0 s, 4.0).
    timeout_per_phase_s: evalplus's cap on one phase (EVALPLUS_TIMEOUT_PER_TASK, default 60).
    startup_s: interpreter start-up allowance added to the derived wall limit.
    inline_output_bytes: outputs whose encoding is at most this big are sent to the parent in full and compared
        with evalplus's rules; bigger ones are compared by digest (exact or `==`-canonical equality).
    canon_max_bytes: outputs bigger than this are compared by the exact digest only.
    isolation: "auto" (bubblewrap when `bwrap` works, else "namespaces" when root, else "basic"; the environment
        variable LATENTMAS_SANDBOX_ISOLATION, if set, replaces "auto"), "bwrap" (PID/mount/network/IPC/user
        namespaces by bubblewrap, plus a seccomp filter when libseccomp is available; error if bwrap is missing),
        "namespaces" (alias "full"; root: the child's own unshare + tmpfs covers + uid drop; error if not root),
        "basic" (rlimits + audit hook + reliability_guard + setsid only).  The mode a run used is in
        CodeVerdict.sandbox.
    python_guards: False disables reliability_guard and the audit hook.  ONLY for testing the kernel layers.
    canonical_wall_s: wall limit for computing expected outputs with the canonical solution.
    expected_cache_dir: on-disk cache of expected outputs; None = $LATENTMAS_CACHE/evalplus_expected if
        LATENTMAS_CACHE is set, else memory only.
    allow_ctypes: ctypes gives raw memory access, which defeats every Python-level guard (audit hook included),
        so by default it cannot be imported -- nor can what imports it (pandas, sympy, scipy).  True restores
        evalplus's behaviour for such solutions; with bwrap or namespaces the kernel layers still contain them.
    """

    wall_s: float | None = None
    cpu_s: float | None = None
    memory_mb: int | None = None
    max_output_bytes: int = 1 << 20
    file_size_mb: int = 16
    nofile: int = 128
    nproc: int = 1
    min_time_limit: float | None = None
    gt_time_limit_factor: float | None = None
    timeout_per_phase_s: float | None = None
    startup_s: float = 5.0
    inline_output_bytes: int = 16 << 20
    canon_max_bytes: int = 16 << 20
    isolation: str = "auto"
    python_guards: bool = True
    canonical_wall_s: float = 600.0
    expected_cache_dir: str | None = None
    allow_ctypes: bool = False

    def resolved(self) -> "SandboxLimits":
        """A copy with the evalplus-derived defaults filled in (wall_s/cpu_s stay None: they depend on the task)."""
        from evalplus.config import DEFAULT_GT_TIME_LIMIT_FACTOR, DEFAULT_MIN_TIME_LIMIT

        mem = self.memory_mb
        if mem is None:
            from evalplus.eval import query_maximum_memory_bytes

            max_bytes = query_maximum_memory_bytes()
            mem = 0 if max_bytes is None else max(1, int(max_bytes) >> 20)
        per_phase = self.timeout_per_phase_s
        if per_phase is None:
            per_phase = float(os.environ.get("EVALPLUS_TIMEOUT_PER_TASK", 60))
        return dataclasses.replace(
            self,
            memory_mb=mem,
            min_time_limit=DEFAULT_MIN_TIME_LIMIT if self.min_time_limit is None else self.min_time_limit,
            gt_time_limit_factor=(
                DEFAULT_GT_TIME_LIMIT_FACTOR if self.gt_time_limit_factor is None else self.gt_time_limit_factor
            ),
            timeout_per_phase_s=per_phase,
        )


class SandboxError(RuntimeError):
    """A failure that is NOT the candidate's fault: the sandbox could not be set up, the problem dict is unusable,
    or the canonical solution did not run.  Raised instead of scoring the sample, so infrastructure problems are
    never silently counted as wrong answers."""


def cache_dir(limits: SandboxLimits) -> str | None:
    """The on-disk expected-output cache directory, or None (memory only)."""
    if limits.expected_cache_dir:
        return limits.expected_cache_dir
    root = os.environ.get("LATENTMAS_CACHE")
    return os.path.join(root, "evalplus_expected") if root else None
