"""Which isolation a run gets, and the bubblewrap command line.

Modes, strongest first (the one a run used is ``CodeVerdict.sandbox`` and the scored record's ``sandbox``):

* ``bwrap+seccomp`` / ``bwrap`` -- bubblewrap (``bwrap``, Debian package ``bubblewrap``) starts the interpreter in
  new PID, mount, network, IPC, UTS and cgroup namespaces on an empty root: only /usr (with the /bin, /lib*
  symlinks), the Python installation (which holds evalplus) and a few /etc time-zone files are bound read-only;
  /proc is the new PID namespace's, /dev a minimal one, /tmp and the work dir size-capped tmpfs, the rest of the
  root read-only.  The checkout,
  the datasets, the expected-output cache and every other process are not visible at the kernel level.  As root,
  bwrap runs privileged and the child drops to a fresh unprivileged uid (bwrap keeps only CAP_SETUID/SETGID for
  that); otherwise bwrap runs unprivileged in a user namespace with further user namespaces disabled.  With
  libseccomp, a seccomp filter is loaded too (seccomp.py); without it the mode is recorded as plain ``bwrap``.
  No ``--new-session``: the supervisor already starts bwrap in a new session without a controlling terminal, and
  keeping the process group lets it SIGKILL everything at once.
* ``namespaces`` -- the fallback when bwrap is missing or cannot start and the scorer is root: the child's own
  unshare (network, mount, IPC), tmpfs covers and uid drop (namespaces.py).  No PID namespace.
* ``basic`` -- rlimits + evalplus's reliability_guard + the audit hook only (not root, no bwrap).

``SandboxLimits.isolation`` picks: "auto" (the strongest that works; degrades once per process with a warning),
"bwrap", "namespaces" (alias "full") or "basic"; the environment variable LATENTMAS_SANDBOX_ISOLATION replaces
"auto" (e.g. ``LATENTMAS_SANDBOX_ISOLATION=namespaces`` forces the fallback for a whole scoring run).
"""
from __future__ import annotations

import os
import shutil
import warnings

from .guards import _within, python_roots
from .limits import SandboxError, SandboxLimits
from .seccomp import bpf_program

MODES = ("bwrap+seccomp", "bwrap", "namespaces", "basic")
ENV_VAR = "LATENTMAS_SANDBOX_ISOLATION"
_CHOICES = ("auto", "bwrap", "namespaces", "full", "basic")
_FALLBACK: dict[str, str] = {}  # kind -> why it could not be set up ("auto" then skips it for this process)
_ETC_FILES = ("/etc/localtime", "/etc/timezone", "/etc/ld.so.cache")


def bwrap_path() -> str | None:
    return shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")


def requested(lim: SandboxLimits) -> str:
    """The isolation asked for: "auto" | "bwrap" | "namespaces" | "basic" (the env var replaces "auto")."""
    choice = lim.isolation
    if choice == "auto":
        choice = os.environ.get(ENV_VAR, "").strip() or "auto"
        if choice not in _CHOICES:
            raise ValueError(f"{ENV_VAR} must be one of {_CHOICES}, got {choice!r}")
    if choice not in _CHOICES:
        raise ValueError(f"isolation must be one of {_CHOICES}, got {lim.isolation!r}")
    return "namespaces" if choice == "full" else choice


def plan(lim: SandboxLimits) -> str:
    """The kind of isolation to set up for the next run: "bwrap" | "namespaces" | "basic"."""
    choice = requested(lim)
    if choice == "bwrap":
        if bwrap_path() is None:
            raise SandboxError("isolation='bwrap' needs bubblewrap (apt-get install bubblewrap)")
        return "bwrap"
    if choice == "namespaces":
        if os.geteuid() != 0:
            raise SandboxError("isolation='namespaces' needs root (uid drop, namespaces)")
        return "namespaces"
    if choice == "basic":
        return "basic"
    if bwrap_path() is not None and "bwrap" not in _FALLBACK:
        return "bwrap"
    if os.geteuid() == 0 and "namespaces" not in _FALLBACK:
        return "namespaces"
    return "basic"


def degrade(kind: str, lim: SandboxLimits, reason: str) -> str | None:
    """`kind` could not be set up: under "auto", remember that (warning once) and return the next kind to try."""
    if requested(lim) != "auto" or kind == "basic":
        return None
    if kind not in _FALLBACK:
        _FALLBACK[kind] = reason
        warnings.warn(f"latentmas.eval.sandbox: {kind} isolation unavailable ({reason}); falling back",
                      RuntimeWarning, stacklevel=4)
    return plan(lim)


def mode_label(kind: str) -> str:
    """The recorded mode of a run set up as `kind`."""
    if kind == "bwrap":
        return "bwrap+seccomp" if bpf_program() is not None else "bwrap"
    return kind


def current_mode(lim: SandboxLimits | None = None) -> str:
    """The mode the next run with these limits would use (after any fallback already decided)."""
    return mode_label(plan(lim or SandboxLimits()))


def _ancestors(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _base_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--perms", "0755", "--dir", "/etc"]  # bwrap would create it 0700
    for f in _ETC_FILES:
        args += ["--ro-bind-try", f, f]
    return args


def _python_binds() -> list[str]:
    """The Python installation read-only, with its parent directories created 0755 (bwrap would make them 0700,
    which the unprivileged child could not traverse)."""
    args: list[str] = []
    made: set[str] = set()
    for root in python_roots():
        if _within(root, "/usr"):
            continue
        for anc in _ancestors(root):
            if anc not in made and not _within(anc, "/usr"):
                args += ["--perms", "0755", "--dir", anc]
                made.add(anc)
        args += ["--ro-bind", root, root]
    return args


def bwrap_argv(workdir: str, file_size_mb: int, seccomp_fd: int | None) -> list[str]:
    """The bwrap command up to and including "--" (the interpreter's argv follows)."""
    privileged = os.geteuid() == 0
    argv = [bwrap_path() or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--hostname", "sandbox"]
    if privileged:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns"]
    argv += _base_binds() + _python_binds()
    size = max(1, int(file_size_mb)) * 4 << 20
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(16 << 20), "--tmpfs", "/tmp"]
    for anc in _ancestors(workdir):
        if not _within(anc, "/tmp"):
            argv += ["--perms", "0755", "--dir", anc]
    argv += ["--perms", "1777" if privileged else "0700", "--size", str(size), "--tmpfs", workdir,
             "--chdir", workdir]
    # The root and /dev are bwrap's own tmpfs mounts, without a size cap: read-only (only /tmp and the work dir,
    # both size-capped, stay writable; /dev/null still is, device nodes ignore the flag).
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv + ["--"]
