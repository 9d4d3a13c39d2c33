"""Hardened execution of model-written code for HumanEval+ / MBPP+, with evalplus's scoring semantics.

Why this exists: the code tasks are scored by *running* what a model wrote.  evalplus's own checker
(`evalplus.eval.untrusted_check`) forks the scoring process, disables a few `os` functions
(`reliability_guard`) and compares outputs with `==` *inside* the process that ran the untrusted code.  That is
no sandbox (its docstring says so): the code can delete files, open sockets, kill its parent, fork-bomb, print
without bound, `os._exit(0)` before the checker reports, or return an object whose `__eq__` is always true.

The package, one concept per module (details and what is *not* contained: docs/RELIABILITY.md):

* ``api`` -- :func:`check_solution`: expected outputs, one sandboxed candidate run, judging in the parent;
* ``limits`` -- :class:`CodeVerdict`, :class:`SandboxLimits`, :class:`SandboxError`;
* ``expected`` -- the canonical solution's outputs, computed in the same sandbox and cached;
* ``supervisor`` -- the parent side of a run: job, start, deadline, output cap, SIGKILL of the group, exit status;
* ``isolation`` -- which mode a run gets (``bwrap+seccomp`` | ``bwrap`` | ``namespaces`` | ``basic``) and the
  bubblewrap command line; ``seccomp`` -- the filter bwrap loads; ``namespaces`` -- the fallback the child sets
  up itself when bwrap is missing;
* ``child`` -- the harness inside the sandboxed interpreter; ``guards`` -- its audit hook and tripwires;
* ``wire`` -- exit codes, the ==-canonical encoding, the plain-data decoder (the child never sees expected outputs,
  the parent never unpickles untrusted bytes);
* ``evalplus_rules`` -- evalplus 0.3.1's comparison rules applied to decoded, trusted objects.
"""
from __future__ import annotations

from .api import check_solution, isolation_mode
from .expected import clear_expected_cache, expected_outputs
from .isolation import ENV_VAR, MODES
from .limits import CodeVerdict, SandboxError, SandboxLimits

__all__ = ["CodeVerdict", "SandboxLimits", "SandboxError", "check_solution", "expected_outputs",
           "clear_expected_cache", "isolation_mode", "MODES", "ENV_VAR"]
