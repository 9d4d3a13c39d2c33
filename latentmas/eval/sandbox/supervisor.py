"""The parent side of one sandboxed run: write the job, start the interpreter (under bwrap or not), read the
result channel under a wall-clock deadline and an output cap, always SIGKILL the whole process group, classify.

The child runs the harness sources captured when this module was imported (so editing the files during a scoring
run cannot skew parent and child); they travel in the job pickle, which the child reads from an inherited
descriptor (the file is unlinked before the child starts).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import isolation, seccomp
from .limits import EXPECTED_VALUE_BYTES, HASH_SEED, SandboxError, SandboxLimits, cache_dir
from .wire import SETUP_EXIT

_HARNESS_MODULES = ("wire", "guards", "namespaces", "child")  # dependency order
_UID_BASE = 1_000_000_000
_UID_SPAN = 1_000_000_000


def _read_harness_sources() -> tuple[tuple[str, str], ...]:
    here = Path(__file__).resolve().parent
    out = []
    for name in _HARNESS_MODULES:
        try:
            out.append((name, (here / f"{name}.py").read_text(encoding="utf-8")))
        except OSError:  # pragma: no cover - e.g. zipped install
            import importlib
            import inspect

            out.append((name, inspect.getsource(importlib.import_module(f"{__package__}.{name}"))))
    return tuple(out)


HARNESS_SOURCES = _read_harness_sources()

# Run by `python -c` in the child: load the harness modules from the job as a private package whose modules share
# one private copy of the builtins dict, unregister them from sys.modules, hand over to child.child_main.
_BOOT = r'''
def _boot():
    import builtins, os, pickle, sys, types
    with os.fdopen(int(sys.argv[1]), "rb") as f:
        job = pickle.load(f)  # written by the trusted parent
    pkg = types.ModuleType("_latentmas_sandbox_child")
    pkg.__path__ = []
    private = dict(vars(builtins))
    names = [pkg.__name__]
    sys.modules[pkg.__name__] = pkg
    for name, source in job.pop("harness"):
        mod = types.ModuleType(pkg.__name__ + "." + name)
        mod.__package__ = pkg.__name__
        mod.__dict__["__builtins__"] = private
        sys.modules[mod.__name__] = mod
        names.append(mod.__name__)
        exec(compile(source, "<sandbox harness " + name + ".py>", "exec"), mod.__dict__)
    main = sys.modules[pkg.__name__ + ".child"].child_main
    for n in names:
        del sys.modules[n]
    del pkg, mod, private
    main(job, int(sys.argv[2]))
_boot()
'''


@dataclass
class RunResult:
    status: str  # "" when the harness reported "done" (the verdict then comes from the messages)
    detail: str
    done: bool
    wall_s: float
    ser_s: float
    report_bytes: int
    stopped: bool  # on_msg asked to stop
    output_tail: str
    mode: str  # the isolation mode the run used (isolation.MODES)


def _evalplus_utils_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("evalplus")
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError("evalplus is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "eval", "utils.py")
    if not os.path.isfile(path):
        raise SandboxError(f"evalplus checker not found at {path}")
    return path


def run_child(*, lim: SandboxLimits, wall_s: float, report_cap: int, on_msg, **task) -> RunResult:
    """One sandboxed run of task = (mode, code, entry_point, inputs, time_limits, not_none); under "auto",
    a set-up failure degrades bwrap -> namespaces -> basic (once per process, with a warning)."""
    kind = isolation.plan(lim)
    while True:
        res = _run_once(kind, task, lim, wall_s, report_cap, on_msg)
        if not res.status.startswith("setup_error"):
            return res
        nxt = isolation.degrade(kind, lim, res.detail)
        if nxt is None:
            raise SandboxError(f"sandbox setup failed ({kind}): {res.detail}")
        kind = nxt


def _make_job(kind: str, task: dict, lim: SandboxLimits, workdir: str, cpu_s: float, evalplus_utils: str) -> dict:
    uid = gid = None
    if kind == "namespaces" or (kind == "bwrap" and os.geteuid() == 0):
        uid = gid = _UID_BASE + secrets.randbelow(_UID_SPAN)
    cdir = cache_dir(lim)
    return {
        **task, "nonce": secrets.token_hex(16), "isolation": kind, "uid": uid, "gid": gid, "workdir": workdir,
        "parent_pid": os.getpid(), "python_guards": bool(lim.python_guards), "allow_ctypes": bool(lim.allow_ctypes),
        "inline_max": int(lim.inline_output_bytes) if task["mode"] == "candidate" else EXPECTED_VALUE_BYTES,
        "canon_max": int(lim.canon_max_bytes), "evalplus_utils": evalplus_utils,
        "hide_paths": [os.path.realpath(cdir)] if cdir else [],
        "limits": {"cpu_s": cpu_s, "memory_mb": lim.memory_mb, "file_size_mb": lim.file_size_mb,
                   "nofile": lim.nofile, "nproc": lim.nproc},
        "harness": HARNESS_SOURCES,
    }


def _job_fd(job: dict) -> int:
    """The job pickle behind a read-only descriptor; the file itself is gone before the child starts."""
    path = os.path.join(job["workdir"], "job.pkl")
    with open(path, "wb") as f:
        pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
    fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    return fd


def _env(workdir: str) -> dict:
    return {
        "PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": HASH_SEED, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
    }


def _spawn(kind: str, job: dict, lim: SandboxLimits, rep_w: int, out_w: int) -> subprocess.Popen:
    job_fd = _job_fd(job)
    extra_fds: list[int] = []
    argv = [sys.executable, "-s", "-P", "-B", "-c", _BOOT, str(job_fd), str(rep_w)]
    cwd = job["workdir"]
    try:
        if kind == "bwrap":
            sfd = seccomp.program_fd()
            if sfd is not None:
                extra_fds.append(sfd)
            argv = isolation.bwrap_argv(job["workdir"], lim.file_size_mb, sfd) + argv
            cwd = "/"
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, pass_fds=(rep_w, job_fd, *extra_fds),
            cwd=cwd, env=_env(job["workdir"]), start_new_session=True, close_fds=True,
        )
    except OSError as e:
        raise SandboxError(f"could not start the sandbox interpreter: {e}") from e
    finally:
        for fd in (job_fd, *extra_fds):
            os.close(fd)


class _Channel:
    """Reads the result pipe and the stdout/stderr pipe of one run and checks the message protocol:
    ready -> loaded | load_error -> one o/x per input, in order -> done."""

    def __init__(self, nonce: str, n_inputs: int, lim: SandboxLimits, report_cap: int, on_msg):
        self.prefix = (nonce + " ").encode()
        self.n_inputs, self.lim, self.report_cap, self.on_msg = n_inputs, lim, report_cap, on_msg
        self.status = self.detail = ""
        self.done = self.stopped = False
        self.phase = "start"  # start -> ready -> loaded -> done
        self.ser_s, self.report_bytes, self.out_total, self.expect_index = 0.0, 0, 0, 0
        self.out_keep, self.rep_buf, self.scan_from = bytearray(), bytearray(), 0
        self.max_line = int(lim.inline_output_bytes) * 4 // 3 + (1 << 16)

    @property
    def over(self) -> bool:
        return bool(self.status) or self.done or self.stopped

    def on_output(self, chunk: bytes) -> None:
        self.out_total += len(chunk)
        if len(self.out_keep) < 4096:
            self.out_keep += chunk[: 4096 - len(self.out_keep)]
        if self.out_total > self.lim.max_output_bytes:
            self.status = "killed"
            self.detail = f"stdout/stderr exceeded {self.lim.max_output_bytes} bytes; process group killed"

    def on_report(self, chunk: bytes) -> float:
        """Feed result-channel bytes; returns the seconds spent handling messages (the deadline is extended)."""
        self.report_bytes += len(chunk)
        if self.report_bytes > self.report_cap:
            self.status = "killed"
            self.detail = f"result channel exceeded {self.report_cap} bytes; process group killed"
            return 0.0
        self.rep_buf += chunk
        spent = 0.0
        while not self.over:
            nl = self.rep_buf.find(b"\n", self.scan_from)
            if nl < 0:
                self.scan_from = len(self.rep_buf)
                if len(self.rep_buf) > self.max_line:
                    self.status, self.detail = "error: corrupted report", "over-long line on the result channel"
                break
            line = bytes(self.rep_buf[:nl])
            del self.rep_buf[: nl + 1]
            self.scan_from = 0
            t0 = time.monotonic()
            try:
                self._handle(line)
            except Exception as e:  # noqa: BLE001 - everything here parses data from the untrusted child
                self.status = "error: corrupted report"
                self.detail = f"result channel: {type(e).__name__}: {e}"[:300]
            spent += time.monotonic() - t0  # the child may have waited on us
        return spent

    def _handle(self, line: bytes) -> None:
        if not line.startswith(self.prefix):
            raise ValueError("line without the run's nonce")
        msg = json.loads(line[len(self.prefix):].decode("utf-8", "surrogatepass"))
        if not isinstance(msg, dict):
            raise ValueError("not an object")
        t = msg.get("t")
        if t == "setup_error":
            self.status, self.detail = "setup_error", str(msg.get("msg"))[:500]
        elif t == "violation":
            ev = str(msg.get("event"))[:60]
            self.status = f"error: sandbox violation: {ev}"
            self.detail = f"blocked {ev} {str(msg.get('args'))[:300]}"
        elif t == "ready" and self.phase == "start":
            self.phase = "ready"
        elif t == "load_error" and self.phase == "ready":
            self._load_error(msg)
        elif t == "loaded" and self.phase == "ready":
            self.phase = "loaded"
        elif t in ("o", "x") and self.phase == "loaded":
            if msg.get("i") != self.expect_index:
                raise ValueError("out-of-order result")
            self.expect_index += 1
            if self.on_msg(msg) == "stop":
                self.stopped = True
        elif t == "done" and self.phase == "loaded":
            if self.expect_index != self.n_inputs:
                raise ValueError("done before all inputs were reported")
            self.ser_s = float(msg.get("ser_s", 0.0))
            self.done = True
        else:
            raise ValueError(f"unexpected message {str(t)[:20]!r} in phase {self.phase}")

    def _load_error(self, msg: dict) -> None:
        e, m = str(msg.get("e"))[:80], str(msg.get("m"))[:300]
        if msg.get("k") == "memory":
            self.status, self.detail = "memory", f"MemoryError while loading the solution: {m}"
            return
        first = m.splitlines()[0][:80] if m else ""
        self.status = f"error: {e}: {first}" if first else f"error: {e}"
        self.detail = f"solution failed to load: {e}: {m}"


class _BwrapPipeWatch:
    """Under bwrap the pipes never reach EOF while the sandbox lives: bwrap's own two processes keep copies of the
    write ends.  So when the pipes are idle, look at the sandboxed interpreter's descriptor table instead: once it
    holds neither pipe it has closed them itself."""

    def __init__(self, pid: int, fds: tuple[int, ...]):
        self.pid = pid
        self.pipes = {f"pipe:[{os.fstat(fd).st_ino}]" for fd in fds}

    def closed_by_child(self) -> bool:
        import psutil

        try:
            procs = [p for p in psutil.Process(self.pid).children(recursive=True) if p.name() != "bwrap"]
            if not procs:
                return False  # not started yet, or already gone (then the pipes close anyway)
            for p in procs:
                fd_dir = f"/proc/{p.pid}/fd"
                if any(os.readlink(f"{fd_dir}/{fd}") in self.pipes for fd in os.listdir(fd_dir)):
                    return False
        except (psutil.Error, OSError):
            return False
        return True


def _pump(proc: subprocess.Popen, ch: _Channel, rep_r: int, out_r: int, deadline: float, wall_s: float,
          watch: _BwrapPipeWatch | None) -> None:
    """Read both pipes until the run is over, the deadline passes, or both pipes close."""
    with selectors.DefaultSelector() as sel:
        for fd in (rep_r, out_r):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        open_fds = {rep_r, out_r}
        while open_fds and not ch.over:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                ch.status, ch.detail = "timeout", f"wall-clock limit of {wall_s:.1f}s exceeded"
                return
            ready = sel.select(min(remaining, 1.0))
            if not ready and watch is not None and watch.closed_by_child():
                open_fds.clear()  # as if both pipes had reached EOF
            for key, _ in ready:
                try:
                    chunk = os.read(key.fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
                elif key.fd == out_r:
                    ch.on_output(chunk)
                else:
                    deadline += ch.on_report(chunk)
                if ch.over:
                    return
    if not ch.over and _still_alive(proc.pid):
        # Both pipes closed without "done" while the process lives on: it closed them itself (a crash would have
        # ended it), a failure we need not wait out.  Otherwise its exit status says why.
        ch.status = "error: closed its result channel"
        ch.detail = "the program closed stdout/stderr and the result channel before the report was complete"


def _still_alive(pid: int) -> bool:
    grace_end = time.monotonic() + 1.0  # a dying process closes its files a moment before it exits
    while time.monotonic() < grace_end:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return False
        except ChildProcessError:
            return False
        time.sleep(0.01)
    return True


def _run_once(kind: str, task: dict, lim: SandboxLimits, wall_s: float, report_cap: int, on_msg) -> RunResult:
    cpu_s = lim.cpu_s if lim.cpu_s is not None else math.ceil(wall_s) + 1
    evalplus_utils = _evalplus_utils_path()  # before anything is created: raises SandboxError if missing
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="latentmas-sbx-"))
    job = _make_job(kind, task, lim, workdir, cpu_s, evalplus_utils)
    ch = _Channel(job["nonce"], len(task["inputs"]), lim, report_cap, on_msg)
    rep_r, rep_w = os.pipe()
    out_r, out_w = os.pipe()
    proc = wait_status = rusage = None
    start = time.monotonic()
    try:
        try:
            proc = _spawn(kind, job, lim, rep_w, out_w)
        finally:
            os.close(rep_w)
            os.close(out_w)
        watch = _BwrapPipeWatch(proc.pid, (rep_r, out_r)) if kind == "bwrap" else None
        _pump(proc, ch, rep_r, out_r, start + wall_s, wall_s, watch)
    finally:
        if proc is not None:
            wait_status, rusage = _kill_and_reap(proc, job["uid"])
        for fd in (rep_r, out_r):
            os.close(fd)
        _rmtree(workdir)
    tail = ch.out_keep.decode("utf-8", "replace")
    if not ch.over:
        ch.status, ch.detail = _classify_exit(kind, wait_status, rusage, cpu_s, ch.phase, tail)
    return RunResult(status=ch.status, detail=ch.detail, done=ch.done, wall_s=time.monotonic() - start,
                     ser_s=ch.ser_s, report_bytes=ch.report_bytes, stopped=ch.stopped, output_tail=tail,
                     mode=isolation.mode_label(kind))


def _kill_and_reap(proc: subprocess.Popen, uid: int | None):
    """Always: kill the whole group (before reaping, so the pgid cannot have been reused), then reap."""
    wait_status = rusage = None
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
    return wait_status, rusage


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _classify_exit(kind: str, wait_status, rusage, cpu_s: float, phase: str, tail: str) -> tuple[str, str]:
    where = {"start": "during sandbox start-up", "ready": "while loading the solution",
             "loaded": "before reporting all results"}.get(phase, "")
    snippet = f"; output: {tail[-300:]!r}" if tail else ""
    if wait_status is None:
        return "killed", f"process vanished {where}{snippet}"
    sig = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else -1
    if sig is None and kind == "bwrap" and 128 < code < 128 + signal.NSIG:
        sig = code - 128  # bwrap exits with 128 + the signal that killed the sandboxed process
    if sig is not None:
        used = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and used >= cpu_s - 0.05):
            return "timeout", f"CPU-time limit of {cpu_s:.0f}s exceeded ({_signame(sig)}) {where}"
        if sig == signal.SIGXFSZ:
            return "killed", f"file-size limit exceeded (SIGXFSZ) {where}"
        maxrss = f", max RSS {rusage.ru_maxrss // 1024} MiB" if rusage is not None else ""
        return "killed", f"died from {_signame(sig)} {where}{maxrss}{snippet}"
    if phase == "start" and (code == SETUP_EXIT or (kind == "bwrap" and tail.startswith("bwrap:"))):
        return "setup_error", f"sandbox set-up exited with code {code}{snippet}"
    return f"error: exited early (code {code})", f"exited with code {code} {where} without a complete report{snippet}"


def _kill_uid(uid: int) -> None:
    """Kill anything still running as this run's private uid (belt and braces: RLIMIT_NPROC=1 means there should
    be nothing, and under bwrap the PID namespace dies with its first process)."""
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


def _rmtree(path: str) -> None:
    def onerror(func, p, exc_info):  # make read-only dirs writable and retry once
        try:
            os.chmod(os.path.dirname(p) or p, 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
