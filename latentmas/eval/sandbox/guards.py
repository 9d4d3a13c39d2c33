"""The child's Python layer: evalplus-parity tripwires and the audit hook that ends the run on attacks.

Loaded by the sandboxed child (stdlib imports only).  `python_roots` is also used by the parent, to bind the Python
installation into the bubblewrap sandbox.  The list of what the hook stops: docs/RELIABILITY.md.
"""
from __future__ import annotations

import os
import sys

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



def _as_path(p, _type=type, _str=str, _bytes=bytes, _decode=os.fsdecode):
    t = _type(p)
    if t is _str:
        return p
    if t is _bytes:
        return _decode(p)
    return None


def _readable_checker(workdir: str, read_roots: tuple[str, ...]):
    """readable(path) -> None, or raises PermissionError for reads/listings outside read_roots."""
    norm, within = _norm_path, _within

    def readable(p: str, what: str) -> None:
        q = norm(p, workdir)
        for root in read_roots:
            if within(q, root):
                return
        raise PermissionError(f"sandbox: {what} {q} is not allowed")

    return readable


def _open_checker(workdir: str, readable, violation):
    """on_open(args) for the "open" audit event: writes outside the work dir end the run; reads are checked."""
    write_flags = _O_WRITE_FLAGS
    norm, within, as_path = _norm_path, _within, _as_path
    _type, _str, _int, _any = type, str, int, any
    allowed_write_files = ("/dev/null",)

    def on_open(args) -> None:
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
                violation("open", args)
            raise PermissionError("sandbox: only str/bytes paths may be opened")
        if not writing:
            readable(p, "reading")
            return
        # os.open() (mode None) may be relative to an unseen dir_fd: only absolute paths are checkable.
        if mode is None and not p.startswith("/"):
            violation("open", args)
        q = norm(p, workdir)
        if not (within(q, workdir) or q in allowed_write_files):
            violation("open", args)

    return on_open


def _path_event_checker(workdir: str, violation):
    """on_path_event(event, args): every path argument must lie in the work dir, no dir_fd-relative paths."""
    path_events = _PATH_EVENTS
    norm, within, as_path, _len = _norm_path, _within, _as_path, len

    def on_path_event(event, args) -> None:
        paths, dirfds = path_events[event]
        for i in dirfds:
            if i < _len(args) and args[i] not in (None, -1):
                violation(event, args)
        for i in paths:
            if i >= _len(args):
                continue
            p = as_path(args[i])
            if p is None or not within(norm(p, workdir), workdir):
                if event == "sqlite3.connect" and p == ":memory:":
                    continue
                violation(event, args)

    return on_path_event


def _make_audit_hook(workdir: str, read_roots: tuple[str, ...], violation, allow_ctypes: bool = False):
    """Audit hook: hard events -> violation() (reports and exits); reads outside read_roots -> PermissionError."""
    hard_events = _HARD_EVENTS
    hard_prefixes = _HARD_PREFIXES
    path_events = _PATH_EVENTS
    blocked_imports = _BLOCKED_IMPORTS
    if allow_ctypes:
        hard_prefixes = tuple(p for p in hard_prefixes if p != "ctypes.")
        blocked_imports = tuple(m for m in blocked_imports if m not in ("ctypes", "_ctypes"))
    readable = _readable_checker(workdir, read_roots)
    on_open = _open_checker(workdir, readable, violation)
    on_path_event = _path_event_checker(workdir, violation)
    as_path, _type, _str, _len = _as_path, type, str, len
    gc_events = ("gc.get_objects", "gc.get_referrers", "gc.get_referents")

    def hook(event, args):
        if event in hard_events or event.startswith(hard_prefixes):
            violation(event, args)
        elif event == "open":
            on_open(args)
        elif event in path_events:
            on_path_event(event, args)
        elif event in ("os.listdir", "os.scandir"):
            p = as_path(args[0]) if args else None
            if p is not None:
                readable(p, "listing")
        elif event == "import":
            name = args[0]
            if _type(name) is _str and name.split(".", 1)[0] in blocked_imports:
                raise ImportError(f"sandbox: import of {name} is blocked")
        elif event in gc_events:
            raise PermissionError(f"sandbox: {event} is blocked")
        elif event == "object.__setattr__" and _len(args) > 1 and args[1] == "__code__":
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



def python_roots() -> list[str]:
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

