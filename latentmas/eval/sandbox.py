"""Hardened execution of model-written code for HumanEval+ / MBPP+, with evalplus's scoring semantics.

Why this exists: the code tasks are scored by *running* what a model wrote.  evalplus's own checker
(`evalplus.eval.untrusted_check`) forks the scoring process, disables a few `os` functions
(`reliability_guard`) and compares outputs with `==` *inside* the process that ran the untrusted code.  That is
no sandbox (its docstring says so): the code can delete files, open sockets, kill its parent, fork-bomb, print
without bound, `os._exit(0)` before the checker reports, or return an object whose `__eq__` is always true.

Design (details and the list of what is *not* contained: docs/RELIABILITY.md, "Sandboxed code execution"):

* Every run is a fresh interpreter (`sys.executable`) started in a new session/process group, in a fresh
  temporary directory, with a controlled environment (`PYTHONHASHSEED=0`, so set/dict orders agree between the
  canonical run and the candidate run).  The child runs this module's source (captured when the parent imported
  it) as `_child_main`, with a private copy of the builtins dict.
* The child limits itself before running anything untrusted: rlimits (CPU, address space, file size, open files,
  processes, core), then -- when the scoring process is root -- private network/mount/IPC namespaces, a private
  tmpfs over /tmp, /var/tmp, /dev/shm, /run and over directories unprivileged users cannot enter (the Python
  installation is bound back), a tmpfs as its working directory, and a drop to a fresh unprivileged uid with
  `no_new_privs`.  Then evalplus's `reliability_guard`, then an audit hook (`sys.addaudithook`, irremovable) that
  kills the run on process creation, signals, sockets, ctypes and writes outside the working directory; the
  functions the guard set to None become tripwires that end the run too.
* The parent enforces the wall-clock limit, caps stdout/stderr, and always SIGKILLs the whole process group.
* Results come back on a dedicated pipe as `nonce + JSON` lines, one per test input, in order, and must end with
  a `done` line: exiting early is a failure.  The child never sees the expected outputs.  It sends each output
  as the bytes of a plain-data pickle (protocol 4, no memo, so equal values give equal bytes) of a copy made only
  of exact built-in types (custom classes are not comparable; subclasses of built-ins and numpy scalars are
  reduced to their built-in value first) with their sha256, or, for outputs larger than
  `SandboxLimits.inline_output_bytes`, only digests.  The PARENT decodes the bytes with a small pure-Python
  decoder that accepts plain data only (never `pickle.loads` on untrusted bytes) and applies evalplus's
  comparison rules (atol, `is_floats`, the MBPP/HumanEval special oracles) to the decoded, trusted objects.  So
  monkey-patched builtins, `__eq__` tricks and forged reports cannot produce a pass: a pass needs outputs equal
  to ones the child has never seen.
* Expected outputs come from running the canonical solution through the same sandbox once per problem; they
  are cached in memory and, if `$LATENTMAS_CACHE` is set (or `SandboxLimits.expected_cache_dir`), on disk under
  `evalplus_expected/<sha256 of the problem>.json`.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["CodeVerdict", "SandboxLimits", "SandboxError", "check_solution", "expected_outputs", "clear_expected_cache"]

DATASETS = ("humaneval", "mbpp")
_CACHE_FORMAT = 1  # bump when the child's encoding or the cache layout changes
_HASH_SEED = "0"
_REPORT_EXIT_OK = 0
_VIOLATION_EXIT = 86
_SETUP_EXIT = 87
_CANON_MAX_DEPTH = 200
_DECODE_MAX_DEPTH = 200
_EXPECTED_VALUE_BYTES = 1 << 20  # expected outputs up to this size are kept as values (cache); bigger: digests


# ----------------------------------------------------------------------------------------------------------------
# Public types
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodeVerdict:
    """Outcome of running one candidate solution against base + plus tests.

    status: "pass" | "failed_tests" | "timeout" | "memory" | "killed" | "error: <short msg>".
    detail: human-readable reason (which input failed and how, the blocked operation, the signal, ...).
    wall_s: wall-clock seconds of the candidate's sandboxed run (expected-output computation excluded).
    """

    passed: bool
    status: str
    detail: str
    wall_s: float


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
    isolation: "auto" (full when root and namespaces work, else basic), "full" (root: namespaces + uid drop;
        error if unavailable), "basic" (rlimits + audit hook + reliability_guard + setsid only).
    python_guards: False disables reliability_guard and the audit hook.  ONLY for testing the kernel layers.
    canonical_wall_s: wall limit for computing expected outputs with the canonical solution.
    expected_cache_dir: on-disk cache of expected outputs; None = $LATENTMAS_CACHE/evalplus_expected if
        LATENTMAS_CACHE is set, else memory only.
    allow_ctypes: ctypes gives raw memory access, which defeats every Python-level guard (audit hook included),
        so by default it cannot be imported -- nor can what imports it (pandas, sympy, scipy).  True restores
        evalplus's behaviour for such solutions; with full isolation the kernel layers still contain them.
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


# ----------------------------------------------------------------------------------------------------------------
# Shared by child and parent: the ==-canonical encoding
# ----------------------------------------------------------------------------------------------------------------
class _Unserializable(Exception):
    pass


def _len8(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _canon_int(n: int) -> bytes:
    s = format(n, "x").encode()  # hex: not subject to the 4300-digit str limit
    return b"I" + _len8(len(s)) + s


def _canon_float(f: float) -> tuple[bytes, bool]:
    if f != f:
        return b"n", True
    if f in (math.inf, -math.inf):
        return (b"F+" if f > 0 else b"F-"), False
    if f.is_integer():
        return _canon_int(int(f)), False  # 2.0 == 2, -0.0 == 0
    s = f.hex().encode()
    return b"H" + _len8(len(s)) + s, False


def _canon(x: Any, depth: int = 0) -> tuple[bytes, bool]:
    """Encoding of a value made of exact built-in types such that, for NaN-free values, a == b iff
    _canon(a) == _canon(b) (numbers by mathematical value, dicts/sets order-free).  Returns (bytes, has_nan)."""
    t = type(x)
    if t is str:
        b = x.encode("utf-8", "surrogatepass")
        return b"S" + _len8(len(b)) + b, False
    if t is int or t is bool:
        return _canon_int(int(x)), False
    if t is float:
        return _canon_float(x)
    if x is None:
        return b"N", False
    if t is complex:
        if x.imag == 0:
            return _canon_float(x.real)
        r, n1 = _canon_float(x.real)
        i, n2 = _canon_float(x.imag)
        return b"C" + r + i, n1 or n2
    if t is bytes:
        return b"B" + _len8(len(x)) + x, False
    if x is Ellipsis:
        return b"E", False
    if depth > _CANON_MAX_DEPTH:
        raise _Unserializable("nested too deeply")
    nan = False
    if t is list or t is tuple:
        parts = [b"L" if t is list else b"T", _len8(len(x))]
        for e in x:
            b, n = _canon(e, depth + 1)
            parts.append(b)
            nan = nan or n
        return b"".join(parts), nan
    if t is dict:
        items = []
        for k, v in x.items():
            kb, n1 = _canon(k, depth + 1)
            vb, n2 = _canon(v, depth + 1)
            items.append(kb + vb)  # encodings are prefix-free, so this sorts by key first
            nan = nan or n1 or n2
        items.sort()
        return b"D" + _len8(len(items)) + b"".join(items), nan
    if t is set or t is frozenset:  # set == frozenset in Python: same tag
        elems = []
        for e in x:
            b, n = _canon(e, depth + 1)
            elems.append(b)
            nan = nan or n
        elems.sort()
        return b"Z" + _len8(len(elems)) + b"".join(elems), nan
    raise _Unserializable(f"type {t.__name__}")


def _is_floats_plain(x: Any) -> bool:
    """evalplus.eval.is_floats for values without numpy arrays (what the sandbox can return)."""
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


# ----------------------------------------------------------------------------------------------------------------
# Child side (runs in the sandboxed interpreter)
# ----------------------------------------------------------------------------------------------------------------
_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWIPC = 0x08000000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38

# Audit events that end the run at once (verdict "error: sandbox violation: <event>").
_HARD_EVENTS = frozenset(
    {
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
        "os.chdir", "os.chroot", "os.symlink", "os.link", "os.startfile", "subprocess.Popen", "pty.spawn",
        "sys.addaudithook", "resource.setrlimit", "resource.prlimit", "signal.pthread_kill", "webbrowser.open",
        "os.setxattr", "os.removexattr", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod",
    }
)
_HARD_PREFIXES = ("socket.", "ctypes.", "syslog.", "_winapi.", "winreg.", "msvcrt.")
# event -> (indices of path arguments, indices of dir_fd arguments); every path must lie in the work dir.
_PATH_EVENTS = {
    "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)),
    "os.mkdir": ((0,), (2,)),
    "os.chmod": ((0,), (2,)),
    "os.chown": ((0,), (3,)),
    "os.truncate": ((0,), ()),
    "os.utime": ((0,), (3,)),
    "shutil.rmtree": ((0,), (1,)),
    "shutil.copyfile": ((0, 1), ()),
    "shutil.copymode": ((0, 1), ()),
    "shutil.copystat": ((0, 1), ()),
    "shutil.copytree": ((0, 1), ()),
    "shutil.move": ((0, 1), ()),
    "shutil.chown": ((0,), ()),
    "shutil.make_archive": ((0,), ()),
    "shutil.unpack_archive": ((0, 1), ()),
    "tempfile.mkstemp": ((0,), ()),
    "tempfile.mkdtemp": ((0,), ()),
    "sqlite3.connect": ((0,), ()),
}
# Modules untrusted code may not (re-)import: raw memory access, fork without an audit event, test hooks.
_BLOCKED_IMPORTS = ("ctypes", "_ctypes", "_posixsubprocess", "_testcapi", "_testinternalcapi", "_testbuffer",
                    "_testmultiphase", "_testsinglephase", "_xxsubinterpreters", "_xxinterpchannels",
                    "_xxtestfuzz", "_ctypes_test", "_testimportmultiple", "_testclinic")
_O_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _norm_path(path: str, cwd: str) -> str:
    """Lexical normalisation (no filesystem access, no patched os.path)."""
    if not path.startswith("/"):
        path = cwd + "/" + path
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/" + "/".join(out)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _make_audit_hook(workdir: str, read_roots: tuple[str, ...], violation, allow_ctypes: bool = False):
    """Audit hook: hard events -> violation() (reports and exits); reads outside read_roots -> PermissionError."""
    hard_events = _HARD_EVENTS
    hard_prefixes = _HARD_PREFIXES
    path_events = _PATH_EVENTS
    blocked_imports = _BLOCKED_IMPORTS
    if allow_ctypes:
        hard_prefixes = tuple(p for p in hard_prefixes if p != "ctypes.")
        blocked_imports = tuple(m for m in blocked_imports if m not in ("ctypes", "_ctypes"))
    write_flags = _O_WRITE_FLAGS
    norm = _norm_path
    within = _within
    _type, _str, _bytes, _int, _any = type, str, bytes, int, any
    _decode = os.fsdecode
    allowed_write_files = ("/dev/null",)

    def as_path(p):
        t = _type(p)
        if t is _str:
            return p
        if t is _bytes:
            return _decode(p)
        return None

    def hook(event, args):
        if event in hard_events or event.startswith(hard_prefixes):
            violation(event, args)
        elif event == "open":
            path, mode, flags = args
            if _type(path) is _int:  # an already-open descriptor
                return
            p = as_path(path)
            if _type(flags) is _int:
                writing = (flags & write_flags) != 0
            else:
                writing = _type(mode) is _str and _any(c in mode for c in "wax+")
            if p is None:
                if writing:
                    violation(event, args)
                raise PermissionError("sandbox: only str/bytes paths may be opened")
            if writing:
                # os.open() (mode None) may be relative to an unseen dir_fd: only absolute paths are checkable.
                if mode is None and not p.startswith("/"):
                    violation(event, args)
                q = norm(p, workdir)
                if not (within(q, workdir) or q in allowed_write_files):
                    violation(event, args)
            else:
                q = norm(p, workdir)
                for root in read_roots:
                    if within(q, root):
                        return
                raise PermissionError(f"sandbox: reading {q} is not allowed")
        elif event in path_events:
            paths, dirfds = path_events[event]
            for i in dirfds:
                if i < len(args) and args[i] not in (None, -1):
                    violation(event, args)
            for i in paths:
                if i >= len(args):
                    continue
                p = as_path(args[i])
                if p is None or not within(norm(p, workdir), workdir):
                    if event == "sqlite3.connect" and p == ":memory:":
                        continue
                    violation(event, args)
        elif event in ("os.listdir", "os.scandir"):
            p = as_path(args[0]) if args else None
            if p is None:
                return
            q = norm(p, workdir)
            for root in read_roots:
                if within(q, root):
                    return
            raise PermissionError(f"sandbox: listing {q} is not allowed")
        elif event == "import":
            name = args[0]
            if _type(name) is _str:
                top = name.split(".", 1)[0]
                if top in blocked_imports:
                    raise ImportError(f"sandbox: import of {name} is blocked")
        elif event in ("gc.get_objects", "gc.get_referrers", "gc.get_referents"):
            raise PermissionError(f"sandbox: {event} is blocked")
        elif event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__":
            raise PermissionError("sandbox: replacing __code__ is blocked")

    return hook


# Functions evalplus's reliability_guard sets to None that are attacks when called: calling them ends the run
# with a violation instead of a catchable TypeError.  (exit/quit/help/open/getcwd stay None, as in evalplus.)
_TRIPWIRES = {
    "os": ("kill", "system", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
           "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
           "chroot", "lchflags", "lchmod", "lchown", "chdir"),
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen",),
}


def _install_tripwires(violation) -> None:
    for modname, names in _TRIPWIRES.items():
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        for name in names:
            if getattr(mod, name, 0) is None:
                def tripwire(*args, _event=f"{modname}.{name}", **kwargs):
                    violation(_event, args)

                setattr(mod, name, tripwire)


def _hidden_ancestor(path: str) -> str | None:
    """First ancestor of path (excluding path) that 'others' cannot enter, or None."""
    import stat as _stat

    parts = [p for p in path.split("/") if p]
    cur = ""
    for part in parts[:-1]:
        cur = cur + "/" + part
        try:
            mode = os.stat(cur).st_mode
        except OSError:
            return None
        if not mode & _stat.S_IXOTH:
            return cur
    return None


def _python_roots() -> list[str]:
    import site
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(sysconfig.get_paths()[key])
        except KeyError:
            pass
    try:
        roots.update(site.getsitepackages())
    except AttributeError:
        pass
    out = set()
    for r in roots:
        if r and os.path.isdir(r):
            out.add(os.path.realpath(r))
    # drop roots contained in other roots
    return sorted(r for r in out if not any(o != r and _within(r, o) for o in out))


def _full_isolation(job: dict) -> None:
    """As root: private net/mount/IPC namespaces, private tmp dirs, hidden non-enterable dirs, tmpfs workdir,
    then drop to the sandbox uid/gid with no_new_privs.  Raises OSError on any failure."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def chk(ret: int, what: str) -> None:
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(src, target, fstype, flags, data) -> None:
        enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
        chk(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

    workdir = job["workdir"]
    uid, gid = job["uid"], job["gid"]
    chk(libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC), "unshare(NEWNS|NEWNET|NEWIPC)")
    mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)

    keep = _python_roots()
    for k in keep:
        st = os.stat(k)
        if not (st.st_mode & 0o005) == 0o005:
            raise OSError(13, f"python installation dir {k} is not readable by unprivileged users")
    covers: dict[str, str] = {}
    for d in ("/tmp", "/var/tmp", "/dev/shm", "/run"):
        if os.path.isdir(d) and not os.path.islink(d):
            covers[os.path.realpath(d)] = "1777" if d != "/run" else "0755"
    for extra in job.get("hide_paths", ()):
        if extra and os.path.isdir(extra):
            covers.setdefault(os.path.realpath(extra), "0755")
    for k in keep + [workdir]:
        anc = _hidden_ancestor(k)
        if anc is not None:
            covers.setdefault(anc, "0755")
    # outermost first; skip covers inside other covers (already hidden) and covers that contain nothing to hide
    ordered = sorted(covers, key=lambda p: p.count("/"))
    done: list[str] = []
    for cover in ordered:
        if any(_within(cover, d) for d in done):
            continue
        if any(_within(k, cover) and k == cover for k in keep):
            continue
        if any(_within(cover, k) for k in keep):
            continue  # never cover part of the python installation
        inside = [k for k in keep if _within(k, cover)]
        fds = [(k, os.open(k, os.O_PATH | os.O_CLOEXEC)) for k in inside]
        mount("tmpfs", cover, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode={covers[cover]},size=16m,nr_inodes=4096")
        for k, fd in fds:
            os.makedirs(k, 0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", k, None, _MS_BIND | _MS_REC, None)
            os.close(fd)
        if _within(workdir, cover):
            os.makedirs(workdir, 0o755, exist_ok=True)
        done.append(cover)
    size = max(1, int(job["limits"]["file_size_mb"])) * 4
    mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV,
          f"mode=0700,uid={uid},gid={gid},size={size}m,nr_inodes=4096")
    os.chdir(workdir)
    chk(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise OSError(1, "uid/gid drop did not take effect")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:") and int(line.split()[1], 16) != 0:
                raise OSError(1, "capabilities remain after the uid drop")
    chk(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")


def _set_pdeathsig(parent_pid: int) -> None:
    """Die with the parent.  Best effort (needs ctypes); checked against a race with the parent's death."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # pragma: no cover - ctypes missing
        pass
    if os.getppid() != parent_pid:
        os._exit(_SETUP_EXIT)


def _load_evalplus_utils(path: str):
    """evalplus/eval/utils.py loaded by path (importing the package would pull numpy and psutil into every run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_latentmas_evalplus_eval_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _child_main(argv: list[str]) -> None:  # noqa: C901 - one linear, commented procedure
    """Entry point of the sandboxed interpreter: argv = [job_path, report_fd]."""
    import pickle

    job_path, report_fd = argv[0], int(argv[1])
    # -- trusted references, taken before any untrusted code exists ------------------------------------------------
    _write, _exit, _type, _len, _isinstance = os.write, os._exit, type, len, isinstance
    _BaseException, _MemoryError, _str = BaseException, MemoryError, str
    import binascii
    from json.encoder import c_encode_basestring_ascii as _jstr  # C functions: immune to patched builtins

    if _jstr is None:  # pragma: no cover - CPython always has the accelerator
        from json.encoder import py_encode_basestring_ascii as _jstr
    _int_repr, _float_repr = int.__repr__, float.__repr__

    def _dumps_json(obj: dict) -> str:
        """JSON for our flat messages (str keys; str/bool/int/float/None values) from captured C functions only."""
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

    from io import BytesIO as _BytesIO

    _sha256, _b2a = hashlib.sha256, binascii.b2a_base64
    _perf = time.perf_counter
    with open(job_path, "rb") as f:
        job = pickle.load(f)  # written by the trusted parent
    os.unlink(job_path)
    try:
        os.unlink(os.path.join(os.path.dirname(job_path), "harness.py"))
    except OSError:
        pass
    nonce = job["nonce"]
    state = {"violating": False}

    def send(obj: dict) -> None:
        data = (nonce + " " + _dumps_json(obj) + "\n").encode("utf-8", "surrogatepass")
        view = memoryview(data)
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
        _exit(_VIOLATION_EXIT)

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

    # -- isolation (before any untrusted code) --------------------------------------------------------------------
    lim = job["limits"]
    try:
        import resource

        cpu = int(math.ceil(lim["cpu_s"]))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        fsize = int(lim["file_size_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(lim["nofile"]), int(lim["nofile"])))
        if job["isolation"] == "full":
            _full_isolation(job)
        _set_pdeathsig(job["parent_pid"])
        nproc = int(lim["nproc"])
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        workdir = os.getcwd()
        ep_utils = _load_evalplus_utils(job["evalplus_utils"])
        time_limit, TimeoutException = ep_utils.time_limit, ep_utils.TimeoutException
        mem_bytes = int(lim["memory_mb"]) << 20 if lim["memory_mb"] else None
        read_roots = tuple(_python_roots()) + (workdir, "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random",
                                                "/usr/share/zoneinfo", "/etc/localtime", "/etc/timezone")
        import copy

        _deepcopy = copy.deepcopy
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
    except BaseException as e:  # noqa: BLE001 - any setup failure is reported, not raised
        name, msg = describe(e)
        try:
            send({"t": "setup_error", "msg": f"{name}: {msg}"})
        finally:
            _exit(_SETUP_EXIT)
    del resource

    class _NotExact(Exception):
        pass

    class _ExactChecker(pickle.Pickler):
        """C-speed walk that fails on the first object that is not an exact built-in (reducer_override is only
        consulted for such objects)."""

        def reducer_override(self, obj):
            if _type(obj) is complex or obj is Ellipsis or obj is complex:  # complex pickles via its class
                return NotImplemented
            raise _NotExact

    exact_scalars = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
    canonical = job["mode"] == "canonical"

    def sanitize(x, depth: int):
        """Copy made of exact built-ins: subclasses reduced to their base value with the base type's own C
        methods, numpy scalars via .item(); anything else is not comparable."""
        if depth > _CANON_MAX_DEPTH:
            raise _Unserializable("nested too deeply")
        t = _type(x)
        if t in exact_scalars:
            return x
        if t is list:
            return [sanitize(e, depth + 1) for e in x]
        if t is tuple:
            return tuple(sanitize(e, depth + 1) for e in x)
        if t is dict:
            return {sanitize(k, depth + 1): sanitize(v, depth + 1) for k, v in dict.items(x)}
        if t is set:
            return {sanitize(e, depth + 1) for e in x}
        if t is frozenset:
            return frozenset(sanitize(e, depth + 1) for e in x)
        if t is bytearray:
            return bytes(x)
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
            return base(sanitize(e, depth + 1) for e in elems)
        try:
            items = dict.items(x)
        except TypeError:
            items = None
        if items is not None:
            return {sanitize(k, depth + 1): sanitize(v, depth + 1) for k, v in items}
        try:
            module = t.__module__
        except BaseException:
            module = None
        if _type(module) is _str and module.split(".", 1)[0] == "numpy" and depth < _CANON_MAX_DEPTH:
            try:
                item = x.item
            except BaseException:
                item = None
            if item is not None and t.__name__ != "ndarray":
                return sanitize(item(), depth + 5)
        raise _Unserializable(typename(t))

    def typename(t) -> str:
        try:
            name = f"{t.__module__}.{t.__qualname__}"
            return name[:120] if _type(name) is _str else "?"
        except BaseException:
            return "?"

    def pickled(value) -> bytes:
        buf = _BytesIO()
        checker = _ExactChecker(buf, protocol=4)
        checker.fast = True  # no memo: equal values give equal bytes whatever their sharing
        checker.dump(value)
        return buf.getvalue()

    def encode(out, want_canon: bool) -> dict:
        """Message fields for one output (see module docstring)."""
        t = _type(out)
        top = None if t in exact_scalars or t in (list, tuple, dict, set, frozenset) else typename(t)
        try:
            value = out
            enc = pickled(out)
        except (_NotExact, RecursionError, ValueError):
            value = sanitize(out, 0)
            try:
                enc = pickled(value)
            except (_NotExact, RecursionError, ValueError) as e:
                raise _Unserializable("not serialisable") from e
        n = _len(enc)
        msg = {"n": n, "h": _sha256(enc).hexdigest()}
        if top is not None:
            msg["top"] = top
        if n <= job["inline_max"]:
            msg["b"] = _b2a(enc, newline=False).decode("ascii")
        if (want_canon or n > job["inline_max"]) and n <= job["canon_max"]:
            cb, nan = _canon(value)
            msg["c"] = _sha256(cb).hexdigest()
            msg["nan"] = nan
            if canonical:
                msg["fl"] = _is_floats_plain(value)
        return msg

    send({"t": "ready"})
    # -- untrusted part -----------------------------------------------------------------------------------------
    entry_point = job["entry_point"]
    not_none = job["not_none"]
    limits_per_input = job["time_limits"]
    exec_globals: dict = {}
    try:
        code = compile(job["code"], "<solution>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:  # raised by the compiler: trusted
        if _isinstance(e, SyntaxError):
            msg = f"{e.msg} (line {e.lineno})"
        else:
            msg = _str(e)[:300]
        kind = "memory" if _isinstance(e, _MemoryError) else "exc"
        send({"t": "load_error", "e": _type(e).__name__, "m": msg, "k": kind})
        _exit(_REPORT_EXIT_OK)
    try:
        exec(code, exec_globals)
    except _BaseException as e:
        name, msg = describe(e)
        kind = "memory" if _isinstance(e, _MemoryError) else "exc"
        send({"t": "load_error", "e": name, "m": msg, "k": kind})
        _exit(_REPORT_EXIT_OK)
    fn = dict.get(exec_globals, entry_point) if _type(exec_globals) is dict else None
    if fn is None:
        send({"t": "load_error", "e": "NameError", "m": f"entry point {entry_point!r} is not defined"})
        _exit(_REPORT_EXIT_OK)
    send({"t": "loaded"})
    ser_total = 0.0
    for i, inp in enumerate(job["inputs"]):
        try:
            # trusted_exec deep-copies the canonical's inputs; a candidate gets the job's own copy, used once
            args = _deepcopy(inp) if canonical else inp
            if limits_per_input is None:
                t0 = _perf()
                out = fn(*args)
                dt = _perf() - t0
            else:
                with time_limit(limits_per_input[i]):
                    t0 = _perf()
                    out = fn(*args)
                    dt = _perf() - t0
        except _BaseException as e:
            name, msg = describe(e)
            if _type(e) is TimeoutException:
                kind = "timeout"
            elif _isinstance(e, _MemoryError):
                kind = "memory"
            else:
                kind = "exc"
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
        except _MemoryError:
            msg = {"t": "x", "i": i, "k": "memory", "e": "MemoryError", "m": "while serialising the output"}
        except _BaseException as e:
            name, m = describe(e)
            msg = {"t": "o", "i": i, "dt": dt, "u": f"{name}: {m}"[:200]}
        del out
        ser_total += _perf() - t1
        send(msg)
    send({"t": "done", "ser_s": ser_total})
    _exit(_REPORT_EXIT_OK)


# ----------------------------------------------------------------------------------------------------------------
# Parent side: safe decoding of the child's output bytes
# ----------------------------------------------------------------------------------------------------------------
class _DecodeError(ValueError):
    pass


_GLOBAL_COMPLEX = object()


def _safe_unpickle(data: bytes) -> Any:
    """Decode the child's pickles (protocol 4, no memo) in pure Python, accepting only the opcodes that encode
    None/bool/int/float/complex/str/bytes/tuple/list/dict/set/frozenset/Ellipsis.  No globals other than
    builtins.complex/Ellipsis, no memo, no DUP (so no aliasing or cycles), nesting depth bounded (so hashing and
    comparing the result cannot exhaust the C stack).  Safe on hostile input, unlike pickle.loads."""
    n_total = len(data)
    pos = 0
    stack: list = []
    depth: list[int] = []
    marks: list[int] = []
    from_bytes = int.from_bytes
    unpack_from = struct.unpack_from

    def take(k: int) -> bytes:
        nonlocal pos
        if k < 0 or pos + k > n_total:
            raise _DecodeError("truncated")
        b = data[pos:pos + k]
        pos += k
        return b

    def push(v: Any, d: int = 0) -> None:
        if d > _DECODE_MAX_DEPTH:
            raise _DecodeError("nested too deeply")
        stack.append(v)
        depth.append(d)

    def pop_mark() -> tuple[list, int]:
        if not marks:
            raise _DecodeError("no mark")
        m = marks.pop()
        if m > len(stack):
            raise _DecodeError("bad mark")
        items, ds = stack[m:], depth[m:]
        del stack[m:], depth[m:]
        if any(v is _GLOBAL_COMPLEX for v in items):
            raise _DecodeError("misplaced global")
        return items, (max(ds) if ds else -1)

    def pop1() -> tuple[Any, int]:
        if not stack or (marks and marks[-1] >= len(stack)):
            raise _DecodeError("stack underflow")
        v = stack.pop()
        if v is _GLOBAL_COMPLEX:
            raise _DecodeError("misplaced global")
        return v, depth.pop()

    def top(kind: type) -> None:
        if not stack or type(stack[-1]) is not kind or (marks and marks[-1] >= len(stack)):
            raise _DecodeError(f"expected a {kind.__name__} on the stack")

    def grow(d: int) -> None:
        depth[-1] = max(depth[-1], d + 1)
        if depth[-1] > _DECODE_MAX_DEPTH:
            raise _DecodeError("nested too deeply")

    while True:
        if pos >= n_total:
            raise _DecodeError("truncated")
        op = data[pos]
        pos += 1
        try:
            if op == 0x80:  # PROTO
                take(1)
            elif op == 0x95:  # FRAME
                take(8)
            elif op == 0x2E:  # STOP
                if len(stack) != 1 or marks or pos != n_total:
                    raise _DecodeError("bad stop")
                return stack[0]
            elif op == 0x4E:  # NONE
                push(None)
            elif op == 0x88:  # NEWTRUE
                push(True)
            elif op == 0x89:  # NEWFALSE
                push(False)
            elif op == 0x4A:  # BININT
                push(from_bytes(take(4), "little", signed=True))
            elif op == 0x4B:  # BININT1
                push(take(1)[0])
            elif op == 0x4D:  # BININT2
                push(from_bytes(take(2), "little"))
            elif op == 0x8A:  # LONG1
                push(from_bytes(take(take(1)[0]), "little", signed=True))
            elif op == 0x8B:  # LONG4
                push(from_bytes(take(from_bytes(take(4), "little", signed=True)), "little", signed=True))
            elif op == 0x47:  # BINFLOAT
                push(unpack_from(">d", take(8))[0])
            elif op in (0x8C, 0x58, 0x8D):  # SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                k = take(1)[0] if op == 0x8C else from_bytes(take(4 if op == 0x58 else 8), "little")
                push(take(k).decode("utf-8", "surrogatepass"))
            elif op in (0x43, 0x42, 0x8E):  # SHORT_BINBYTES, BINBYTES, BINBYTES8
                k = take(1)[0] if op == 0x43 else from_bytes(take(4 if op == 0x42 else 8), "little")
                push(bytes(take(k)))
            elif op == 0x5D:  # EMPTY_LIST
                push([])
            elif op == 0x29:  # EMPTY_TUPLE
                push(())
            elif op == 0x7D:  # EMPTY_DICT
                push({})
            elif op == 0x8F:  # EMPTY_SET
                push(set())
            elif op == 0x28:  # MARK
                marks.append(len(stack))
            elif op == 0x61:  # APPEND
                v, d = pop1()
                top(list)
                stack[-1].append(v)
                grow(d)
            elif op == 0x65:  # APPENDS
                items, d = pop_mark()
                top(list)
                stack[-1].extend(items)
                grow(d)
            elif op == 0x74:  # TUPLE
                items, d = pop_mark()
                push(tuple(items), d + 1)
            elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
                popped = [pop1() for _ in range(op - 0x84)][::-1]
                push(tuple(v for v, _ in popped), max(d for _, d in popped) + 1)
            elif op == 0x73:  # SETITEM
                v, dv = pop1()
                k, dk = pop1()
                top(dict)
                stack[-1][k] = v
                grow(max(dk, dv))
            elif op == 0x75:  # SETITEMS
                items, d = pop_mark()
                if len(items) % 2:
                    raise _DecodeError("odd SETITEMS")
                top(dict)
                target = stack[-1]
                for i in range(0, len(items), 2):
                    target[items[i]] = items[i + 1]
                grow(d)
            elif op == 0x90:  # ADDITEMS
                items, d = pop_mark()
                top(set)
                stack[-1].update(items)
                grow(d)
            elif op == 0x91:  # FROZENSET
                items, d = pop_mark()
                push(frozenset(items), d + 1)
            elif op == 0x93:  # STACK_GLOBAL: only builtins.complex / builtins.Ellipsis
                name, _ = pop1()
                module, _ = pop1()
                if module == "builtins" and name == "complex":
                    push(_GLOBAL_COMPLEX)
                elif module == "builtins" and name == "Ellipsis":
                    push(Ellipsis)
                else:
                    raise _DecodeError(f"global {str(module)[:40]}.{str(name)[:40]} is not allowed")
            elif op in (0x81, 0x52):  # NEWOBJ, REDUCE (complex only)
                args, _ = pop1()
                if not stack or (marks and marks[-1] >= len(stack)):
                    raise _DecodeError("stack underflow")
                cls = stack.pop()
                depth.pop()
                if cls is not _GLOBAL_COMPLEX or type(args) is not tuple or len(args) != 2 or \
                        any(type(a) is not float for a in args):
                    raise _DecodeError("only complex(float, float) may be constructed")
                push(complex(*args))
            else:
                raise _DecodeError(f"opcode {op:#x} is not accepted")
        except TypeError as e:  # unhashable set element / dict key
            raise _DecodeError(f"bad value: {e}") from e
        except UnicodeDecodeError as e:
            raise _DecodeError("bad string") from e


def _read_own_source() -> str:
    try:
        with open(__file__, encoding="utf-8") as f:
            return f.read()
    except OSError:  # pragma: no cover - e.g. zipped install
        import inspect

        return inspect.getsource(sys.modules[__name__])


_HARNESS_SOURCE = _read_own_source()


_FOREIGN_CLASSES: dict[tuple[type, str], type] = {}
_FOREIGN_LOCK = threading.Lock()


def _foreign(value: Any, typename: str) -> Any:
    """Wrap a decoded top-level value whose original type was not the exact built-in in a trusted stand-in
    subclass, so evalplus's `type(out) == type(exp)` sees the difference while `==` keeps value semantics."""
    base = type(value)
    if base in (bool, type(None), type(Ellipsis)):
        return value  # not subclassable
    key = (base, typename)
    with _FOREIGN_LOCK:
        cls = _FOREIGN_CLASSES.get(key)
        if cls is None:
            cls = type(f"Sandboxed[{typename}]", (base,), {"__slots__": ()} if base not in (dict, list, set) else {})
            _FOREIGN_CLASSES[key] = cls
    return cls(value)


# ----------------------------------------------------------------------------------------------------------------
# Parent side: evalplus comparison rules (mirror of evalplus.eval.unsafe_execute's per-input block)
# ----------------------------------------------------------------------------------------------------------------
def _evalplus_compare(dataset: str, entry_point: str, inp: Any, out: Any, exp: Any, atol: float) -> tuple[bool, float]:
    """One iteration of evalplus 0.3.1 `unsafe_execute`'s loop body, applied to trusted, decoded objects.
    Returns (passed, atol) -- evalplus mutates atol across the inputs of a phase, so it is threaded through.
    Any exception means "failed", as in evalplus."""
    import numpy as np
    from evalplus.eval import is_floats
    from evalplus.eval._special_oracle import (
        MBPP_OUTPUT_NOT_NONE_TASKS,
        MBPP_OUTPUT_SET_EQ_TASKS,
        _digit_distance_nums,
        _poly,
        _surface_Area,
    )

    try:
        exact_match = out == exp
        if dataset == "mbpp":
            if "are_equivalent" == entry_point:  # Mbpp/164 special oracle
                exact_match = exact_match or True
            elif "sum_div" == entry_point:  # Mbpp/295 special oracle
                exact_match = exact_match or out == 0
            elif "surface_Area" == entry_point:  # Mbpp/581 special oracle
                exact_match = exact_match or abs(out - _surface_Area(*inp)) <= atol
            elif "digit_distance_nums" == entry_point:  # Mbpp/558 special oracle
                exact_match = exact_match or out == _digit_distance_nums(*inp)
            elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                exact_match = set(out) == set(exp)
            elif entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
                if isinstance(out, bool):
                    exact_match = out == exp
                else:
                    exact_match = exp == (out is not None)
        if dataset == "humaneval":
            if "find_zero" == entry_point:
                assert abs(_poly(*inp, out)) <= atol
                return True, atol
        if atol == 0 and is_floats(exp):
            atol = 1e-6  # enforce atol for float comparison
        if not exact_match and atol != 0:
            assert type(out) == type(exp)  # noqa: E721 - evalplus's exact rule
            if isinstance(exp, (list, tuple)):
                assert len(out) == len(exp)
            assert np.allclose(out, exp, rtol=1e-07, atol=atol)
        else:
            assert exact_match
    except BaseException:  # noqa: BLE001 - evalplus counts any exception as a failed input
        return False, atol
    return True, atol


def _needs_values(dataset: str, entry_point: str) -> bool:
    """Tasks whose evalplus verdict is not a function of `out == exp` alone."""
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS, MBPP_OUTPUT_SET_EQ_TASKS

    if dataset == "humaneval":
        return entry_point == "find_zero"
    return entry_point in ("are_equivalent", "sum_div", "surface_Area", "digit_distance_nums") or (
        entry_point in MBPP_OUTPUT_SET_EQ_TASKS or entry_point in MBPP_OUTPUT_NOT_NONE_TASKS
    )


# ----------------------------------------------------------------------------------------------------------------
# Parent side: expected outputs
# ----------------------------------------------------------------------------------------------------------------
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
        "format": _CACHE_FORMAT,
        "dataset": dataset,
        "python": list(sys.version_info[:2]),
        "hashseed": _HASH_SEED,
        **{k: problem.get(k) for k in ("task_id", "entry_point", "prompt", "canonical_solution", "base_input",
                                       "plus_input")},
    }
    blob = json.dumps(ident, sort_keys=True, default=repr).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()


def _cache_dir(limits: SandboxLimits) -> str | None:
    if limits.expected_cache_dir:
        return limits.expected_cache_dir
    root = os.environ.get("LATENTMAS_CACHE")
    return os.path.join(root, "evalplus_expected") if root else None


def _exp_to_json(e: _Expected) -> dict:
    return {
        "format": _CACHE_FORMAT, "key": e.key, "task_id": e.task_id, "n_base": e.n_base, "ser_s": e.ser_s,
        "report_bytes": e.report_bytes,
        "outputs": [
            {"h": o.h, "n": o.n, "b": None if o.b is None else base64.b64encode(o.b).decode("ascii"), "c": o.c,
             "nan": o.nan, "fl": o.fl, "top": o.top, "dt": o.dt}
            for o in e.outputs
        ],
    }


def _exp_from_json(d: dict, key: str, n_inputs: int) -> _Expected | None:
    try:
        if d.get("format") != _CACHE_FORMAT or d.get("key") != key or len(d["outputs"]) != n_inputs:
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
        cdir = _cache_dir(lim)
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

    run = _run_child(
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


# ----------------------------------------------------------------------------------------------------------------
# Parent side: running the child
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _RunResult:
    status: str  # "" when the harness reported "done" (the verdict then comes from the messages)
    detail: str
    done: bool
    wall_s: float
    ser_s: float
    report_bytes: int
    stopped: bool  # on_msg asked to stop
    output_tail: str


_ISOLATION_FALLBACK: dict[str, str] = {}  # "auto" -> reason full isolation is unavailable (decided once)
_UID_BASE = 1_000_000_000
_UID_SPAN = 1_000_000_000


def _evalplus_utils_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("evalplus")
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError("evalplus is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "eval", "utils.py")
    if not os.path.isfile(path):
        raise SandboxError(f"evalplus checker not found at {path}")
    return path


def _effective_isolation(lim: SandboxLimits) -> str:
    if lim.isolation not in ("auto", "full", "basic"):
        raise ValueError(f"isolation must be auto, full or basic, got {lim.isolation!r}")
    if lim.isolation == "basic":
        return "basic"
    if lim.isolation == "full":
        if os.geteuid() != 0:
            raise SandboxError("isolation='full' needs root (uid drop, namespaces)")
        return "full"
    if os.geteuid() != 0 or "auto" in _ISOLATION_FALLBACK:
        return "basic"
    return "full"


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _run_child(*, mode: str, code: str, entry_point: str, inputs: list, time_limits: list | None, not_none: bool,
               lim: SandboxLimits, wall_s: float, report_cap: int, on_msg) -> _RunResult:
    isolation = _effective_isolation(lim)
    res = _run_child_once(mode=mode, code=code, entry_point=entry_point, inputs=inputs, time_limits=time_limits,
                          not_none=not_none, lim=lim, wall_s=wall_s, report_cap=report_cap, on_msg=on_msg,
                          isolation=isolation)
    if res.status.startswith("setup_error") and isolation == "full" and lim.isolation == "auto":
        # namespaces / uid drop unavailable (e.g. a container without CAP_SYS_ADMIN): degrade once, loudly.
        import warnings

        _ISOLATION_FALLBACK["auto"] = res.detail
        warnings.warn(f"latentmas.eval.sandbox: full isolation unavailable ({res.detail}); using basic isolation "
                      f"(rlimits + audit hook + reliability_guard)", RuntimeWarning, stacklevel=3)
        res = _run_child_once(mode=mode, code=code, entry_point=entry_point, inputs=inputs,
                              time_limits=time_limits, not_none=not_none, lim=lim, wall_s=wall_s,
                              report_cap=report_cap, on_msg=on_msg, isolation="basic")
    if res.status.startswith("setup_error"):
        raise SandboxError(f"sandbox setup failed ({isolation}): {res.detail}")
    return res


def _run_child_once(*, mode, code, entry_point, inputs, time_limits, not_none, lim, wall_s, report_cap, on_msg,
                    isolation) -> _RunResult:  # noqa: C901 - the supervision loop is one piece
    import pickle
    import secrets
    import selectors
    import shutil
    import subprocess
    import tempfile

    nonce = secrets.token_hex(16)
    uid = gid = None
    if isolation == "full":
        uid = gid = _UID_BASE + secrets.randbelow(_UID_SPAN)
    cpu_s = lim.cpu_s if lim.cpu_s is not None else math.ceil(wall_s) + 1
    cdir = _cache_dir(lim)
    job = {
        "nonce": nonce, "mode": mode, "code": code, "entry_point": entry_point, "inputs": inputs,
        "time_limits": time_limits, "not_none": not_none, "isolation": isolation, "uid": uid, "gid": gid,
        "parent_pid": os.getpid(), "python_guards": bool(lim.python_guards), "allow_ctypes": bool(lim.allow_ctypes),
        "inline_max": int(lim.inline_output_bytes) if mode == "candidate" else _EXPECTED_VALUE_BYTES,
        "canon_max": int(lim.canon_max_bytes),
        "evalplus_utils": _evalplus_utils_path(),
        "hide_paths": [os.path.realpath(cdir)] if cdir else [],
        "limits": {"cpu_s": cpu_s, "memory_mb": lim.memory_mb, "file_size_mb": lim.file_size_mb,
                   "nofile": lim.nofile, "nproc": lim.nproc},
    }
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="latentmas-sbx-"))
    job["workdir"] = workdir
    job_path = os.path.join(workdir, "job.pkl")
    with open(job_path, "wb") as f:
        pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
    env = {
        "PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": _HASH_SEED, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
    }
    # The child runs the source this module was imported from (captured at import: editing the file during a
    # scoring run cannot skew parent and child).  The harness module gets a private copy of the builtins dict, so
    # untrusted `builtins.x = ...` patches do not reach the harness's own name lookups; it is also unregistered
    # from sys.modules once loaded.
    harness_path = os.path.join(workdir, "harness.py")
    with open(harness_path, "w", encoding="utf-8") as f:
        f.write(_HARNESS_SOURCE)
    boot = ("import builtins, importlib.util as u, sys; s = u.spec_from_file_location('_latentmas_sandbox_child',"
            " sys.argv[1]); m = u.module_from_spec(s); m.__dict__['__builtins__'] = dict(vars(builtins));"
            " sys.modules[s.name] = m; s.loader.exec_module(m); del sys.modules[s.name]; f = m._child_main;"
            " del m, s, u; f(sys.argv[2:])")
    rep_r, rep_w = os.pipe()
    out_r, out_w = os.pipe()
    proc = None
    start = time.monotonic()
    status, detail = "", ""
    done = stopped = False
    ser_s = 0.0
    report_bytes = 0
    out_keep = bytearray()
    out_total = 0
    expect_index = 0
    phase = "start"  # start -> ready -> loaded -> done
    rusage = None
    wait_status = None
    sel = None
    try:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-s", "-P", "-B", "-c", boot, harness_path, job_path, str(rep_w)],
                stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, pass_fds=(rep_w,), cwd=workdir, env=env,
                start_new_session=True, close_fds=True,
            )
        except OSError as e:
            raise SandboxError(f"could not start the sandbox interpreter: {e}") from e
        finally:
            os.close(rep_w)
            os.close(out_w)
        deadline = start + wall_s
        sel = selectors.DefaultSelector()
        for fd in (rep_r, out_r):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        open_fds = {rep_r, out_r}
        rep_buf = bytearray()
        scan_from = 0
        max_line = int(lim.inline_output_bytes) * 4 // 3 + (1 << 16)
        prefix = (nonce + " ").encode()
        while open_fds and not status and not done and not stopped:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status, detail = "timeout", f"wall-clock limit of {wall_s:.1f}s exceeded"
                break
            for key, _ in sel.select(min(remaining, 1.0)):
                fd = key.fd
                try:
                    chunk = os.read(fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    open_fds.discard(fd)
                    continue
                if fd == out_r:
                    out_total += len(chunk)
                    if len(out_keep) < 4096:
                        out_keep += chunk[: 4096 - len(out_keep)]
                    if out_total > lim.max_output_bytes:
                        status = "killed"
                        detail = f"stdout/stderr exceeded {lim.max_output_bytes} bytes; process group killed"
                        break
                    continue
                report_bytes += len(chunk)
                if report_bytes > report_cap:
                    status, detail = "killed", f"result channel exceeded {report_cap} bytes; process group killed"
                    break
                rep_buf += chunk
                while True:
                    nl = rep_buf.find(b"\n", scan_from)
                    if nl < 0:
                        scan_from = len(rep_buf)
                        if len(rep_buf) > max_line:
                            status, detail = "error: corrupted report", "over-long line on the result channel"
                        break
                    line = bytes(rep_buf[:nl])
                    del rep_buf[: nl + 1]
                    scan_from = 0
                    t_cmp = time.monotonic()
                    try:
                        if not line.startswith(prefix):
                            raise ValueError("line without the run's nonce")
                        msg = json.loads(line[len(prefix):].decode("utf-8", "surrogatepass"))
                        if not isinstance(msg, dict):
                            raise ValueError("not an object")
                        t = msg.get("t")
                        if t == "setup_error":
                            status, detail = "setup_error", str(msg.get("msg"))[:500]
                        elif t == "violation":
                            ev = str(msg.get("event"))[:60]
                            status = f"error: sandbox violation: {ev}"
                            detail = f"blocked {ev} {str(msg.get('args'))[:300]}"
                        elif t == "ready" and phase == "start":
                            phase = "ready"
                        elif t == "load_error" and phase == "ready":
                            e, m = str(msg.get("e"))[:80], str(msg.get("m"))[:300]
                            if msg.get("k") == "memory":
                                status, detail = "memory", f"MemoryError while loading the solution: {m}"
                            else:
                                first = m.splitlines()[0][:80] if m else ""
                                status = f"error: {e}: {first}" if first else f"error: {e}"
                                detail = f"solution failed to load: {e}: {m}"
                        elif t == "loaded" and phase == "ready":
                            phase = "loaded"
                        elif t in ("o", "x") and phase == "loaded":
                            if msg.get("i") != expect_index:
                                raise ValueError("out-of-order result")
                            expect_index += 1
                            if on_msg(msg) == "stop":
                                stopped = True
                        elif t == "done" and phase == "loaded":
                            if expect_index != len(inputs):
                                raise ValueError("done before all inputs were reported")
                            ser_s = float(msg.get("ser_s", 0.0))
                            done = True
                        else:
                            raise ValueError(f"unexpected message {str(t)[:20]!r} in phase {phase}")
                    except Exception as e:  # noqa: BLE001 - everything here parses data from the untrusted child
                        status, detail = "error: corrupted report", f"result channel: {type(e).__name__}: {e}"[:300]
                    deadline += time.monotonic() - t_cmp  # the child may have waited on us
                    if status or done or stopped:
                        break
                if status or done or stopped:
                    break
        if not status and not done and not stopped and not open_fds:
            # Both pipes closed without "done".  If the process is still alive it closed them itself (a crash
            # would have ended it): that is a failure we need not wait out.  Otherwise its exit status says why.
            alive = True
            grace_end = time.monotonic() + 1.0  # a dying process closes its files a moment before it exits
            while alive and time.monotonic() < grace_end:
                try:
                    alive = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
                except ChildProcessError:
                    alive = False
                if alive:
                    time.sleep(0.01)
            if alive:
                status = "error: closed its result channel"
                detail = "the program closed stdout/stderr and the result channel before the report was complete"
    finally:
        if proc is not None:
            # Always: kill the whole group (before reaping, so the pgid cannot have been reused), then reap.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                _, wait_status, rusage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(wait_status)
            except ChildProcessError:
                pass
            if uid is not None:
                _kill_uid(uid)
        if sel is not None:
            sel.close()
        for fd in (rep_r, out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        _rmtree(workdir, shutil)
    wall = time.monotonic() - start
    tail = out_keep.decode("utf-8", "replace")
    if not status and not done and not stopped:
        status, detail = _classify_exit(wait_status, rusage, cpu_s, phase, tail)
    return _RunResult(status=status, detail=detail, done=done, wall_s=wall, ser_s=ser_s, report_bytes=report_bytes,
                      stopped=stopped, output_tail=tail)


def _classify_exit(wait_status, rusage, cpu_s: float, phase: str, tail: str) -> tuple[str, str]:
    where = {"start": "during sandbox start-up", "ready": "while loading the solution",
             "loaded": "before reporting all results"}.get(phase, "")
    snippet = f"; output: {tail[-300:]!r}" if tail else ""
    if wait_status is None:
        return "killed", f"process vanished {where}{snippet}"
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        used = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and used >= cpu_s - 0.05):
            return "timeout", f"CPU-time limit of {cpu_s:.0f}s exceeded ({_signame(sig)}) {where}"
        if sig == signal.SIGXFSZ:
            return "killed", f"file-size limit exceeded (SIGXFSZ) {where}"
        maxrss = f", max RSS {rusage.ru_maxrss // 1024} MiB" if rusage is not None else ""
        return "killed", f"died from {_signame(sig)} {where}{maxrss}{snippet}"
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else -1
    if phase == "start" and code == _SETUP_EXIT:
        return "setup_error", f"sandbox set-up exited with code {code}{snippet}"
    return f"error: exited early (code {code})", f"exited with code {code} {where} without a complete report{snippet}"


def _kill_uid(uid: int) -> None:
    """Full isolation: kill anything still running as this run's private uid (belt and braces: RLIMIT_NPROC=1
    means there should be nothing)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return
    for p in psutil.process_iter(["uids"]):
        try:
            uids = p.info["uids"]
            if uids is not None and uid in (uids.real, uids.effective):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _rmtree(path: str, shutil) -> None:
    def onerror(func, p, exc_info):  # make read-only dirs writable and retry once
        try:
            os.chmod(os.path.dirname(p) or p, 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------
def _short_repr(x: Any, n: int = 160) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 60, 60, 6, 6, 4, 6
    try:
        s = r.repr(x)
    except Exception:  # noqa: BLE001 - e.g. ints beyond the str-conversion limit
        s = f"<{type(x).__name__}>"
    return s if len(s) <= n else s[: n - 3] + "..."


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

    ep = problem["entry_point"]
    n_base = exp.n_base
    time_limits = [max(lim.min_time_limit, lim.gt_time_limit_factor * o.dt) for o in exp.outputs]
    if lim.wall_s is not None:
        wall = float(lim.wall_s)
    else:
        per_phase = lim.timeout_per_phase_s
        wall = (min(per_phase, sum(time_limits[:n_base])) + 2 + min(per_phase, sum(time_limits[n_base:])) + 2
                + lim.startup_s + 2 * exp.ser_s + 1)
    need_values = _needs_values(dataset, ep)
    atol0 = problem["atol"]
    verdict: dict[str, str] = {}
    state = {"atol": atol0}

    def where(i: int) -> str:
        return f"base input #{i}" if i < n_base else f"plus input #{i - n_base}"

    def fail(status: str, detail: str) -> str:
        verdict["status"], verdict["detail"] = status, detail
        return "stop"

    def on_msg(msg: dict) -> str | None:
        i = msg["i"]
        if i == n_base:
            state["atol"] = atol0  # evalplus checks base and plus in separate calls, each starting from atol
        inp = inputs[i]
        if msg["t"] == "x":
            kind = msg.get("k")
            e, m = str(msg.get("e"))[:80], str(msg.get("m"))[:200]
            status = {"timeout": "timeout", "memory": "memory"}.get(kind, "failed_tests")
            extra = f" (per-input limit {time_limits[i]:.2f}s)" if kind == "timeout" else ""
            return fail(status, f"{where(i)} {_short_repr(inp)}: {e}: {m}{extra}")
        e_out = exp.outputs[i]
        if "u" in msg:
            if dataset == "mbpp" and ep == "are_equivalent":
                return None  # evalplus: `exact_match or True`
            return fail("failed_tests", f"{where(i)} {_short_repr(inp)}: returned a non-comparable value "
                                        f"({str(msg['u'])[:100]})")
        h, n = str(msg["h"]), int(msg["n"])
        got_b = base64.b64decode(msg["b"], validate=True) if "b" in msg else None
        if got_b is not None and (len(got_b) != n or hashlib.sha256(got_b).hexdigest() != h):
            raise ValueError("output bytes do not match their digest")
        got_c = msg.get("c")
        exact_known = not need_values and not e_out.nan  # digest equality decides out == exp
        if exact_known and ((h == e_out.h and n == e_out.n) or (got_c is not None and got_c == e_out.c)):
            if state["atol"] == 0 and e_out.fl:  # the rest of evalplus's rule for an exact match
                state["atol"] = 1e-6
            return None
        got = raw = None
        if got_b is not None:
            got = raw = _safe_unpickle(got_b)
            if msg.get("top"):
                got = _foreign(raw, str(msg["top"])[:120])
        if got_b is not None and e_out.b is not None:
            ok, state["atol"] = _evalplus_compare(dataset, ep, inp, got, e_out.value(), state["atol"])
            if ok:
                return None
            return fail("failed_tests", f"{where(i)} {_short_repr(inp)}: got {_short_repr(got)}, "
                                        f"expected {_short_repr(e_out.value())}")
        if dataset == "mbpp" and ep == "are_equivalent":
            return None  # evalplus: `exact_match or True`
        # A large output on one side: only the ==-canonical digest is available for the expected value.
        if exact_known and got is not None and e_out.c is not None and got_c is None:
            try:
                cb, _ = _canon(raw)
            except (_Unserializable, RecursionError):
                cb = None
            if cb is not None and hashlib.sha256(cb).hexdigest() == e_out.c:
                if state["atol"] == 0 and e_out.fl:
                    state["atol"] = 1e-6
                return None
        why = "differs from the expected output"
        if need_values or state["atol"] != 0 or e_out.fl:
            why += " (tolerance/special-oracle comparison is only available for outputs of at most " \
                   f"{_EXPECTED_VALUE_BYTES} bytes)"
        return fail("failed_tests", f"{where(i)} {_short_repr(inp)}: output of {max(n, e_out.n)} bytes {why}")

    run = _run_child(
        mode="candidate", code=solution, entry_point=ep, inputs=inputs, time_limits=time_limits,
        not_none=dataset == "mbpp" and ep in MBPP_OUTPUT_NOT_NONE_TASKS, lim=lim, wall_s=wall,
        report_cap=2 * sum(o.n * 4 // 3 + 512 for o in exp.outputs if o.n <= lim.inline_output_bytes) + (64 << 20),
        on_msg=on_msg,
    )
    if run.stopped and verdict:
        return CodeVerdict(False, verdict["status"], verdict["detail"], run.wall_s)
    if run.done:
        return CodeVerdict(True, "pass", f"passed {n_base} base + {len(inputs) - n_base} plus inputs", run.wall_s)
    return CodeVerdict(False, run.status, run.detail, run.wall_s)
