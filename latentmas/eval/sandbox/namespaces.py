"""The namespace fallback (root without bubblewrap): the child isolates itself with unshare/mount/setresuid.

Used only when `bwrap` is missing or cannot start (isolation mode "namespaces"; see isolation.py).  As root, the
child enters private network/mount/IPC namespaces, covers /tmp, /var/tmp, /dev/shm, /run and directories
unprivileged users cannot enter with tmpfs mounts (the Python installation bound back), mounts a tmpfs work dir,
and drops to a fresh unprivileged uid with no_new_privs.  What this does NOT hide (world-readable files, other
processes in /proc): docs/RELIABILITY.md.  Loaded by the child (stdlib + sibling harness modules only).
"""
from __future__ import annotations

import os
import signal

from .guards import _within, python_roots
from .wire import SETUP_EXIT

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



class _Libc:
    """The few libc calls Python 3.11's os module lacks (unshare, mount, prctl), with errno checking."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        libc.unshare.argtypes = [ctypes.c_int]
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def check(self, ret: int, what: str) -> None:
        if ret != 0:
            err = self.ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(self, src, target, fstype, flags, data) -> None:
        enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
        self.check(self.libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

    def unshare(self, flags: int) -> None:
        self.check(self.libc.unshare(flags), "unshare(NEWNS|NEWNET|NEWIPC)")

    def prctl(self, option: int, arg: int, what: str) -> None:
        self.check(self.libc.prctl(option, arg, 0, 0, 0), what)


def _covers(job: dict, keep: list[str]) -> dict[str, str]:
    """Directories to cover with an empty tmpfs -> their mode."""
    covers: dict[str, str] = {}
    for d in ("/tmp", "/var/tmp", "/dev/shm", "/run"):
        if os.path.isdir(d) and not os.path.islink(d):
            covers[os.path.realpath(d)] = "1777" if d != "/run" else "0755"
    for extra in job.get("hide_paths", ()):
        if extra and os.path.isdir(extra):
            covers.setdefault(os.path.realpath(extra), "0755")
    for k in keep + [job["workdir"]]:
        anc = _hidden_ancestor(k)
        if anc is not None:
            covers.setdefault(anc, "0755")
    return covers


def _mount_covers(libc: _Libc, covers: dict[str, str], keep: list[str], workdir: str) -> None:
    """Outermost first; skip covers inside other covers (already hidden) and covers of the Python installation;
    bind the Python roots inside a cover back (through O_PATH fds taken before the cover hides them)."""
    done: list[str] = []
    for cover in sorted(covers, key=lambda p: p.count("/")):
        if any(_within(cover, d) for d in done) or any(_within(cover, k) for k in keep):
            continue
        inside = [k for k in keep if _within(k, cover)]
        fds = [(k, os.open(k, os.O_PATH | os.O_CLOEXEC)) for k in inside]
        libc.mount("tmpfs", cover, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode={covers[cover]},size=16m,nr_inodes=4096")
        for k, fd in fds:
            os.makedirs(k, 0o755, exist_ok=True)
            libc.mount(f"/proc/self/fd/{fd}", k, None, _MS_BIND | _MS_REC, None)
            os.close(fd)
        if _within(workdir, cover):
            os.makedirs(workdir, 0o755, exist_ok=True)
        done.append(cover)


def _drop_privileges(libc: _Libc, uid: int, gid: int) -> None:
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, "prctl(NO_NEW_PRIVS)")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise OSError(1, "uid/gid drop did not take effect")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:") and int(line.split()[1], 16) != 0:
                raise OSError(1, "capabilities remain after the uid drop")
    libc.prctl(_PR_SET_DUMPABLE, 0, "prctl(DUMPABLE)")


def drop_privileges(uid: int, gid: int) -> None:
    """Under privileged bubblewrap (scorer is root): become the run's private uid before untrusted code runs."""
    _drop_privileges(_Libc(), uid, gid)


def full_isolation(job: dict) -> None:
    """As root: private net/mount/IPC namespaces, private tmp dirs, hidden non-enterable dirs, tmpfs workdir,
    then drop to the sandbox uid/gid with no_new_privs.  Raises OSError on any failure."""
    libc = _Libc()
    workdir = job["workdir"]
    uid, gid = job["uid"], job["gid"]
    libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC)
    libc.mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)
    keep = python_roots()
    for k in keep:
        if not (os.stat(k).st_mode & 0o005) == 0o005:
            raise OSError(13, f"python installation dir {k} is not readable by unprivileged users")
    _mount_covers(libc, _covers(job, keep), keep, workdir)
    size = max(1, int(job["limits"]["file_size_mb"])) * 4
    libc.mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV,
               f"mode=0700,uid={uid},gid={gid},size={size}m,nr_inodes=4096")
    os.chdir(workdir)
    _drop_privileges(libc, uid, gid)


def set_pdeathsig(parent_pid: int | None) -> None:
    """Die with the parent.  Best effort (needs ctypes); checked against a race with the parent's death (skipped
    under bubblewrap, where the parent is outside the PID namespace and bwrap --die-with-parent does this)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # pragma: no cover - ctypes missing
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(SETUP_EXIT)
