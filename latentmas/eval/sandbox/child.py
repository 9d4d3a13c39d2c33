"""The child harness: what runs inside the sandboxed interpreter.

The parent (supervisor.py) sends this module's source, with wire.py, guards.py and namespaces.py, in the job
pickle; the boot code loads them as a private package whose modules share one private copy of the builtins dict
(so untrusted `builtins.x = ...` patches do not reach the harness's own name lookups) and unregisters them from
sys.modules before anything untrusted runs.  Order of events in :func:`child_main`:

1. trusted references are taken (os.write, os._exit, the C JSON string encoder, ...);
2. every inherited descriptor but stdin/stdout/stderr and the result pipe is closed;
3. rlimits, then the namespace fallback's own isolation when asked (under bubblewrap the namespaces already
   exist), PR_SET_PDEATHSIG, RLIMIT_NPROC, evalplus's reliability_guard, tripwires, the audit hook;
4. the solution is compiled and exec'd, the entry point called on every input under evalplus's time_limit, each
   output encoded (plain-data pickle + digests, see wire.py) and sent as one ``nonce + JSON`` line; then ``done``.

Only stdlib imports and sibling harness modules (wire, guards, namespaces) may be imported here.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import time

from .guards import _install_tripwires, _make_audit_hook, python_roots
from .namespaces import drop_privileges, full_isolation, set_pdeathsig
from .wire import CANON_MAX_DEPTH, REPORT_EXIT_OK, SETUP_EXIT, VIOLATION_EXIT, _canon, _is_floats_plain, _Unserializable

_EXTRA_READ_ROOTS = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/usr/share/zoneinfo", "/etc/localtime",
                     "/etc/timezone")


def _json_dumper():
    """JSON for our flat messages (str keys; str/bool/int/float/None values) from captured C functions only."""
    from json.encoder import c_encode_basestring_ascii as _jstr  # C functions: immune to patched builtins

    if _jstr is None:  # pragma: no cover - CPython always has the accelerator
        from json.encoder import py_encode_basestring_ascii as _jstr
    _int_repr, _float_repr, _type, _str = int.__repr__, float.__repr__, type, str

    def dumps(obj: dict) -> str:
        parts = []
        for k, v in obj.items():
            t = _type(v)
            if t is _str:
                js = _jstr(v)
            elif t is bool:
                js = "true" if v else "false"
            elif t is int:
                js = _int_repr(v)
            elif t is float:
                js = _float_repr(v) if v == v and v not in (math.inf, -math.inf) else "null"
            elif v is None:
                js = "null"
            else:
                js = _jstr(_str(v))
            parts.append(_jstr(k) + ":" + js)
        return "{" + ",".join(parts) + "}"

    return dumps


def _reporter(nonce: str, report_fd: int):
    """(send, violation, describe) bound to trusted references taken now."""
    _write, _exit, _type, _str, _BaseException = os.write, os._exit, type, str, BaseException
    dumps = _json_dumper()
    state = {"violating": False}

    def send(obj: dict) -> None:
        view = memoryview((nonce + " " + dumps(obj) + "\n").encode("utf-8", "surrogatepass"))
        while view:
            n = _write(report_fd, view)
            view = view[n:]

    def violation(event, args) -> None:
        if not state["violating"]:
            state["violating"] = True
            try:
                desc = _str(args)[:300]
            except _BaseException:
                desc = "?"
            try:
                send({"t": "violation", "event": event, "args": desc})
            except _BaseException:
                pass
        _exit(VIOLATION_EXIT)

    def describe(exc: BaseException) -> tuple[str, str]:
        try:
            name = _type(exc).__name__
            if _type(name) is not _str:
                name = "Exception"
        except _BaseException:
            name = "Exception"
        try:
            msg = _BaseException.__str__(exc)
            if _type(msg) is not _str:
                msg = ""
        except _BaseException:
            msg = ""
        return name[:80], msg[:500]

    return send, violation, describe


def _close_inherited_fds(report_fd: int) -> None:
    """Nothing but stdin/stdout/stderr and the result pipe may reach the solution: an inherited directory
    descriptor would be a way out of any mount namespace (openat(fd, ".."))."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != report_fd:
            try:
                os.close(fd)
            except OSError:
                pass


def _load_evalplus_utils(path: str):
    """evalplus/eval/utils.py loaded by path (importing the package would pull numpy and psutil into every run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_latentmas_evalplus_eval_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _set_rlimits(lim: dict) -> None:
    import resource

    cpu = int(math.ceil(lim["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    fsize = int(lim["file_size_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(lim["nofile"]), int(lim["nofile"])))


def _confine(job: dict, violation):
    """Everything before untrusted code: rlimits, isolation, guards.  Returns evalplus's (time_limit,
    TimeoutException).  Raises on any failure (reported as a setup error)."""
    import resource

    lim = job["limits"]
    _set_rlimits(lim)
    if job["isolation"] == "namespaces":
        full_isolation(job)
    elif job["isolation"] == "bwrap" and job["uid"] is not None:
        drop_privileges(job["uid"], job["gid"])
    set_pdeathsig(None if job["isolation"] == "bwrap" else job["parent_pid"])
    nproc = int(lim["nproc"])
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    workdir = os.getcwd()
    ep_utils = _load_evalplus_utils(job["evalplus_utils"])
    mem_bytes = int(lim["memory_mb"]) << 20 if lim["memory_mb"] else None
    read_roots = tuple(python_roots()) + (workdir,) + _EXTRA_READ_ROOTS
    if job["python_guards"]:
        _putenv = os.putenv
        ep_utils.reliability_guard(maximum_memory_bytes=mem_bytes)  # evalplus's guard, as evalplus applies it
        # `import numpy` calls os.putenv; under evalplus numpy is already imported by the checking process, so
        # the guard's `os.putenv = None` never breaks it there.  Setting our own environment is harmless.
        os.putenv = _putenv
        _install_tripwires(violation)
    elif mem_bytes is not None:
        for res in (resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK):
            resource.setrlimit(res, (mem_bytes, mem_bytes))
    # Remove raw-memory and fork-without-audit modules from reach; their re-import is blocked by the hook.
    purge = ("_posixsubprocess",) if job["allow_ctypes"] else ("ctypes", "_ctypes", "_posixsubprocess")
    for name in list(sys.modules):
        if name.split(".", 1)[0] in purge:
            del sys.modules[name]
    if "subprocess" in sys.modules:
        sys.modules["subprocess"]._posixsubprocess = None
    if job["python_guards"]:
        sys.addaudithook(_make_audit_hook(workdir, read_roots, violation, job["allow_ctypes"]))
    return ep_utils.time_limit, ep_utils.TimeoutException


_EXACT_SCALARS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_CONTAINERS = (list, tuple, dict, set, frozenset)


def _typename(t) -> str:
    try:
        name = f"{t.__module__}.{t.__qualname__}"
        return name[:120] if type(name) is str else "?"
    except BaseException:
        return "?"


def _sanitize(x, depth: int):
    """Copy made of exact built-ins: subclasses reduced to their base value with the base type's own C methods,
    numpy scalars via .item(); anything else is not comparable."""
    if depth > CANON_MAX_DEPTH:
        raise _Unserializable("nested too deeply")
    t = type(x)
    if t in _EXACT_SCALARS:
        return x
    if t is list:
        return [_sanitize(e, depth + 1) for e in x]
    if t is tuple:
        return tuple(_sanitize(e, depth + 1) for e in x)
    if t is dict:
        return {_sanitize(k, depth + 1): _sanitize(v, depth + 1) for k, v in dict.items(x)}
    if t is set:
        return {_sanitize(e, depth + 1) for e in x}
    if t is frozenset:
        return frozenset(_sanitize(e, depth + 1) for e in x)
    if t is bytearray:
        return bytes(x)
    return _sanitize_foreign(x, t, depth)


def _sanitize_foreign(x, t: type, depth: int):
    for conv in (float.__float__, int.__index__, str.__str__, bytes.__bytes__, complex.__complex__):
        try:
            return conv(x)
        except TypeError:
            pass
    for base, it in ((list, list.__iter__), (tuple, tuple.__iter__), (set, set.__iter__),
                     (frozenset, frozenset.__iter__)):
        try:
            elems = it(x)
        except TypeError:
            continue
        return base(_sanitize(e, depth + 1) for e in elems)
    try:
        items = dict.items(x)
    except TypeError:
        items = None
    if items is not None:
        return {_sanitize(k, depth + 1): _sanitize(v, depth + 1) for k, v in items}
    try:
        module = t.__module__
    except BaseException:
        module = None
    if type(module) is str and module.split(".", 1)[0] == "numpy" and depth < CANON_MAX_DEPTH:
        try:
            item = x.item
        except BaseException:
            item = None
        if item is not None and t.__name__ != "ndarray":
            return _sanitize(item(), depth + 5)
    raise _Unserializable(_typename(t))


def _encoder(job: dict):
    """encode(out, want_canon) -> message fields for one output (see wire.py and the package docstring)."""
    import binascii
    import pickle
    from io import BytesIO

    _type, _len, _sha256, _b2a = type, len, hashlib.sha256, binascii.b2a_base64
    inline_max, canon_max, canonical = job["inline_max"], job["canon_max"], job["mode"] == "canonical"

    class NotExact(Exception):
        pass

    class ExactChecker(pickle.Pickler):
        """C-speed walk that fails on the first object that is not an exact built-in (reducer_override is only
        consulted for such objects)."""

        def reducer_override(self, obj):
            if _type(obj) is complex or obj is Ellipsis or obj is complex:  # complex pickles via its class
                return NotImplemented
            raise NotExact

    def pickled(value) -> bytes:
        buf = BytesIO()
        checker = ExactChecker(buf, protocol=4)
        checker.fast = True  # no memo: equal values give equal bytes whatever their sharing
        checker.dump(value)
        return buf.getvalue()

    def encode(out, want_canon: bool) -> dict:
        t = _type(out)
        top = None if t in _EXACT_SCALARS or t in _CONTAINERS else _typename(t)
        try:
            value = out
            enc = pickled(out)
        except (NotExact, RecursionError, ValueError):
            value = _sanitize(out, 0)
            try:
                enc = pickled(value)
            except (NotExact, RecursionError, ValueError) as e:
                raise _Unserializable("not serialisable") from e
        n = _len(enc)
        msg = {"n": n, "h": _sha256(enc).hexdigest()}
        if top is not None:
            msg["top"] = top
        if n <= inline_max:
            msg["b"] = _b2a(enc, newline=False).decode("ascii")
        if (want_canon or n > inline_max) and n <= canon_max:
            cb, nan = _canon(value)
            msg["c"] = _sha256(cb).hexdigest()
            msg["nan"] = nan
            if canonical:
                msg["fl"] = _is_floats_plain(value)
        return msg

    return encode


def _load_solution(job: dict, send, describe):
    """Compile and exec the solution; the entry point, or None after reporting why there is none."""
    _isinstance, _type, _str = isinstance, type, str
    exec_globals: dict = {}
    try:
        code = compile(job["code"], "<solution>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:  # raised by the compiler: trusted
        msg = f"{e.msg} (line {e.lineno})" if _isinstance(e, SyntaxError) else _str(e)[:300]
        kind = "memory" if _isinstance(e, MemoryError) else "exc"
        send({"t": "load_error", "e": _type(e).__name__, "m": msg, "k": kind})
        return None
    try:
        exec(code, exec_globals)
    except BaseException as e:
        name, msg = describe(e)
        send({"t": "load_error", "e": name, "m": msg, "k": "memory" if _isinstance(e, MemoryError) else "exc"})
        return None
    fn = dict.get(exec_globals, job["entry_point"]) if _type(exec_globals) is dict else None
    if fn is None:
        send({"t": "load_error", "e": "NameError", "m": f"entry point {job['entry_point']!r} is not defined"})
    return fn


def _call(fn, args, limit, time_limit, perf):
    if limit is None:
        t0 = perf()
        out = fn(*args)
        return out, perf() - t0
    with time_limit(limit):
        t0 = perf()
        out = fn(*args)
        return out, perf() - t0


def _run_inputs(job: dict, fn, send, describe, encode, timing) -> float:
    """Call the entry point on every input, one message each; returns the seconds spent serialising.
    timing = (time_limit, TimeoutException, perf_counter, deepcopy), all taken before untrusted code ran."""
    time_limit, TimeoutException, _perf, _deepcopy = timing
    _type, _isinstance, _str = type, isinstance, str
    canonical, not_none, limits = job["mode"] == "canonical", job["not_none"], job["time_limits"]
    ser_total = 0.0
    for i, inp in enumerate(job["inputs"]):
        try:
            # trusted_exec deep-copies the canonical's inputs; a candidate gets the job's own copy, used once
            out, dt = _call(fn, _deepcopy(inp) if canonical else inp, None if limits is None else limits[i],
                            time_limit, _perf)
        except BaseException as e:
            name, msg = describe(e)
            kind = "timeout" if _type(e) is TimeoutException else "memory" if _isinstance(e, MemoryError) else "exc"
            send({"t": "x", "i": i, "k": kind, "e": name, "m": msg})
            continue
        t1 = _perf()
        try:
            if not_none:
                # evalplus: the canonical output is reduced to `is not None`; a candidate's bool is kept as is
                out = (out is not None) if canonical or _type(out) is not bool else out
            msg = encode(out, want_canon=canonical)
            msg.update({"t": "o", "i": i, "dt": dt})
        except _Unserializable as e:
            msg = {"t": "o", "i": i, "dt": dt, "u": _str(e.args[0] if e.args else "?")[:200]}
        except MemoryError:
            msg = {"t": "x", "i": i, "k": "memory", "e": "MemoryError", "m": "while serialising the output"}
        except BaseException as e:
            name, m = describe(e)
            msg = {"t": "o", "i": i, "dt": dt, "u": f"{name}: {m}"[:200]}
        del out
        ser_total += _perf() - t1
        send(msg)
    return ser_total


def child_main(job: dict, report_fd: int) -> None:
    """Entry point of the sandboxed interpreter (called by the boot code with the job the parent wrote)."""
    _exit = os._exit
    send, violation, describe = _reporter(job["nonce"], report_fd)
    try:
        import copy

        _close_inherited_fds(report_fd)
        encode = _encoder(job)
        timing = (*_confine(job, violation), time.perf_counter, copy.deepcopy)
    except BaseException as e:  # noqa: BLE001 - any setup failure is reported, not raised
        name, msg = describe(e)
        try:
            send({"t": "setup_error", "msg": f"{name}: {msg}"})
        finally:
            _exit(SETUP_EXIT)
    send({"t": "ready"})
    # -- untrusted part -----------------------------------------------------------------------------------------
    fn = _load_solution(job, send, describe)
    if fn is None:
        _exit(REPORT_EXIT_OK)
    send({"t": "loaded"})
    ser_total = _run_inputs(job, fn, send, describe, encode, timing)
    send({"t": "done", "ser_s": ser_total})
    _exit(REPORT_EXIT_OK)
