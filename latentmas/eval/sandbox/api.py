"""`check_solution`: run a candidate in the sandbox and judge its outputs against the expected ones."""
from __future__ import annotations

import base64
import hashlib
from typing import Any

from . import isolation
from .evalplus_rules import _evalplus_compare, _needs_values
from .expected import _problem_inputs, _validate_problem, expected_outputs
from .limits import EXPECTED_VALUE_BYTES, CodeVerdict, SandboxError, SandboxLimits
from .supervisor import run_child
from .wire import _canon, _foreign, _safe_unpickle, _Unserializable


def _short_repr(x: Any, n: int = 160) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 60, 60, 6, 6, 4, 6
    try:
        s = r.repr(x)
    except Exception:  # noqa: BLE001 - e.g. ints beyond the str-conversion limit
        s = f"<{type(x).__name__}>"
    return s if len(s) <= n else s[: n - 3] + "..."


class _Judge:
    """on_msg for a candidate run: one verdict per reported input, evalplus's rules; "stop" at the first failure
    (like evalplus's fast_check).  evalplus mutates atol across the inputs of a phase, so it is kept here."""

    def __init__(self, dataset: str, problem: dict, exp, inputs: list, time_limits: list[float]):
        self.dataset, self.ep, self.exp, self.inputs, self.time_limits = dataset, problem["entry_point"], exp, \
            inputs, time_limits
        self.n_base, self.atol0, self.atol = exp.n_base, problem["atol"], problem["atol"]
        self.need_values = _needs_values(dataset, self.ep)
        self.free_pass = dataset == "mbpp" and self.ep == "are_equivalent"  # evalplus: `exact_match or True`
        self.verdict: dict[str, str] = {}

    def where(self, i: int) -> str:
        return f"base input #{i}" if i < self.n_base else f"plus input #{i - self.n_base}"

    def fail(self, status: str, detail: str) -> str:
        self.verdict["status"], self.verdict["detail"] = status, detail
        return "stop"

    def exact_pass(self, e_out) -> None:
        if self.atol == 0 and e_out.fl:  # the rest of evalplus's rule for an exact match
            self.atol = 1e-6

    def __call__(self, msg: dict) -> str | None:
        i = msg["i"]
        if i == self.n_base:
            self.atol = self.atol0  # evalplus checks base and plus in separate calls, each starting from atol
        inp = self.inputs[i]
        if msg["t"] == "x":
            kind = msg.get("k")
            e, m = str(msg.get("e"))[:80], str(msg.get("m"))[:200]
            status = {"timeout": "timeout", "memory": "memory"}.get(kind, "failed_tests")
            extra = f" (per-input limit {self.time_limits[i]:.2f}s)" if kind == "timeout" else ""
            return self.fail(status, f"{self.where(i)} {_short_repr(inp)}: {e}: {m}{extra}")
        if "u" in msg:
            if self.free_pass:
                return None
            return self.fail("failed_tests", f"{self.where(i)} {_short_repr(inp)}: returned a non-comparable value "
                                             f"({str(msg['u'])[:100]})")
        return self.judge_output(i, inp, msg, self.exp.outputs[i])

    def judge_output(self, i: int, inp: Any, msg: dict, e_out) -> str | None:
        h, n = str(msg["h"]), int(msg["n"])
        got_b = base64.b64decode(msg["b"], validate=True) if "b" in msg else None
        if got_b is not None and (len(got_b) != n or hashlib.sha256(got_b).hexdigest() != h):
            raise ValueError("output bytes do not match their digest")
        got_c = msg.get("c")
        exact_known = not self.need_values and not e_out.nan  # digest equality decides out == exp
        if exact_known and ((h == e_out.h and n == e_out.n) or (got_c is not None and got_c == e_out.c)):
            self.exact_pass(e_out)
            return None
        got = raw = None
        if got_b is not None:
            got = raw = _safe_unpickle(got_b)
            if msg.get("top"):
                got = _foreign(raw, str(msg["top"])[:120])
        if got_b is not None and e_out.b is not None:
            ok, self.atol = _evalplus_compare(self.dataset, self.ep, inp, got, e_out.value(), self.atol)
            if ok:
                return None
            return self.fail("failed_tests", f"{self.where(i)} {_short_repr(inp)}: got {_short_repr(got)}, "
                                             f"expected {_short_repr(e_out.value())}")
        if self.free_pass:
            return None
        # A large output on one side: only the ==-canonical digest is available for the expected value.
        if exact_known and got is not None and e_out.c is not None and got_c is None:
            try:
                cb, _ = _canon(raw)
            except (_Unserializable, RecursionError):
                cb = None
            if cb is not None and hashlib.sha256(cb).hexdigest() == e_out.c:
                self.exact_pass(e_out)
                return None
        why = "differs from the expected output"
        if self.need_values or self.atol != 0 or e_out.fl:
            why += " (tolerance/special-oracle comparison is only available for outputs of at most " \
                   f"{EXPECTED_VALUE_BYTES} bytes)"
        return self.fail("failed_tests", f"{self.where(i)} {_short_repr(inp)}: output of {max(n, e_out.n)} bytes {why}")


def _wall_limit(lim: SandboxLimits, exp, time_limits: list[float]) -> float:
    if lim.wall_s is not None:
        return float(lim.wall_s)
    per_phase, n_base = lim.timeout_per_phase_s, exp.n_base
    return (min(per_phase, sum(time_limits[:n_base])) + 2 + min(per_phase, sum(time_limits[n_base:])) + 2
            + lim.startup_s + 2 * exp.ser_s + 1)


def check_solution(solution: str, problem: dict, dataset: str, limits: SandboxLimits | None = None) -> CodeVerdict:
    """Run `solution` (complete Python source defining problem['entry_point']) against the base + plus tests of
    an evalplus problem in the sandbox and judge it with evalplus's rules.

    Never raises because of what the solution does.  Raises ValueError for a bad `dataset`/`problem` argument and
    SandboxError when the sandbox itself or the canonical solution fails (not the candidate's fault).
    """
    _validate_problem(problem, dataset)
    if not isinstance(solution, str) or not solution.strip():
        return CodeVerdict(False, "error: no code", "the solution is empty or not a string", 0.0)
    lim = (limits or SandboxLimits()).resolved()
    exp = expected_outputs(problem, dataset, lim)
    base, plus = _problem_inputs(problem, dataset)
    inputs = base + plus
    if len(inputs) != len(exp.outputs):
        raise SandboxError(f"{problem['task_id']}: cached expected outputs do not match the inputs")
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS

    time_limits = [max(lim.min_time_limit, lim.gt_time_limit_factor * o.dt) for o in exp.outputs]
    judge = _Judge(dataset, problem, exp, inputs, time_limits)
    ep = problem["entry_point"]
    run = run_child(
        mode="candidate", code=solution, entry_point=ep, inputs=inputs, time_limits=time_limits,
        not_none=dataset == "mbpp" and ep in MBPP_OUTPUT_NOT_NONE_TASKS, lim=lim, wall_s=_wall_limit(lim, exp, time_limits),
        report_cap=2 * sum(o.n * 4 // 3 + 512 for o in exp.outputs if o.n <= lim.inline_output_bytes) + (64 << 20),
        on_msg=judge,
    )
    if run.stopped and judge.verdict:
        return CodeVerdict(False, judge.verdict["status"], judge.verdict["detail"], run.wall_s, run.mode)
    if run.done:
        return CodeVerdict(True, "pass", f"passed {exp.n_base} base + {len(inputs) - exp.n_base} plus inputs",
                           run.wall_s, run.mode)
    return CodeVerdict(False, run.status, run.detail, run.wall_s, run.mode)


def isolation_mode(limits: SandboxLimits | None = None) -> str:
    """The isolation mode check_solution uses in this process ("bwrap+seccomp" | "bwrap" | "namespaces" |
    "basic"): what the scorer records in each code task's scored record."""
    return isolation.current_mode(limits)
