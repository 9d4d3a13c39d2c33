"""The seccomp filter bubblewrap loads (``bwrap --seccomp FD``) before it executes the sandboxed interpreter.

Why libseccomp through ctypes, in the parent: Debian's ``python3-seccomp`` binds libseccomp for /usr/bin/python3
only (Debian's own Python ABI), while the project runs on whatever Python the user has (a pyenv 3.11 here), and
the PyPI wrappers are thin ctypes layers over the same library anyway.  libseccomp's C API is small and stable
(``seccomp_init``, ``seccomp_rule_add_array``, ``seccomp_export_bpf``), so we call ``libseccomp.so.2`` directly
and export the BPF program once per process; bwrap reads it from a memfd per run.  The child never imports ctypes
for this.  Without libseccomp (or if building the filter fails) :func:`bpf_program` returns None with the reason
in :data:`UNAVAILABLE`, and runs are recorded as mode ``bwrap`` instead of ``bwrap+seccomp``.

Policy: allow by default (CPython, numpy and evalplus need an open-ended set of calls), and make the calls a
scored program never needs fail with EPERM: debugging/other processes' memory (ptrace, process_vm_*), namespace
and mount manipulation (unshare, setns, mount, clone with CLONE_NEW* flags; clone3 answers ENOSYS so libc falls
back to clone, which is inspectable), kernel attack surface (bpf, perf_event_open, userfaultfd, io_uring,
keyctl, modules, kexec), clock/host settings, and every socket family but AF_UNIX.  Foreign-architecture
syscalls (e.g. i386 ``int 0x80``) kill the process (libseccomp's default bad-arch action).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

_ACT_ALLOW = 0x7FFF0000
_CMP_NE, _CMP_MASKED_EQ = 1, 7
_AF_UNIX = 1
_TIOCSTI = 0x5412
_CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
                    0x00000080)  # NEWNS NEWCGROUP NEWUTS NEWIPC NEWUSER NEWPID NEWNET NEWTIME

DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "name_to_handle_at", "open_by_handle_at",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "lookup_dcookie",
    "personality", "uselib", "nfsservctl", "modify_ldt",
)


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)  # SCMP_ACT_ERRNO(code)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _load_libseccomp():
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _add(lib, ctx, action: int, name: str, *cmps: _ArgCmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return  # not a syscall on this architecture
    arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
    if rc != 0:
        raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")


def _build() -> bytes:
    lib = _load_libseccomp()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        eperm = _errno_action(errno.EPERM)
        for name in DENIED_SYSCALLS:
            _add(lib, ctx, eperm, name)
        _add(lib, ctx, _errno_action(errno.ENOSYS), "clone3")
        for flag in _CLONE_NEW_FLAGS:
            _add(lib, ctx, eperm, "clone", _ArgCmp(0, _CMP_MASKED_EQ, flag, flag))
        _add(lib, ctx, eperm, "socket", _ArgCmp(0, _CMP_NE, _AF_UNIX, 0))
        _add(lib, ctx, eperm, "ioctl", _ArgCmp(1, _CMP_MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
        fd = os.memfd_create("latentmas-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc != 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


_LOCK = threading.Lock()
_PROGRAM: list[bytes | None] = []
UNAVAILABLE: dict[str, str] = {}  # "reason" -> why there is no filter (empty while one is available)


def bpf_program() -> bytes | None:
    """The filter as a BPF program (built once per process), or None when libseccomp is unavailable."""
    with _LOCK:
        if not _PROGRAM:
            try:
                _PROGRAM.append(_build())
            except (OSError, AttributeError) as e:  # no library, old library, export failure
                UNAVAILABLE["reason"] = f"{type(e).__name__}: {e}"
                _PROGRAM.append(None)
                import warnings

                warnings.warn(f"latentmas.eval.sandbox: no seccomp filter ({UNAVAILABLE['reason']}); bwrap runs "
                              "without one and are recorded as mode 'bwrap'", RuntimeWarning, stacklevel=2)
        return _PROGRAM[0]


def program_fd() -> int | None:
    """A fresh memfd holding the BPF program at offset 0 (the caller passes it to bwrap and closes it)."""
    prog = bpf_program()
    if prog is None:
        return None
    fd = os.memfd_create("latentmas-seccomp")  # inheritable: bwrap reads it
    os.write(fd, prog)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
