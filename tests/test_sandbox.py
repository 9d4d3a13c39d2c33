"""latentmas.eval.sandbox: hostile candidate programs are contained and scored as failures; evalplus semantics hold.

Every hostile program (tests/hostile/*.py) is a candidate solution to a real HumanEval+/MBPP+ problem from the
vendored data.  Each run asserts: not a pass, the expected status, this (scoring) process is alive, canary files
outside the sandbox are unchanged, nothing it tried to create exists, no child process or zombie is left behind,
the wall time is bounded, and the run used the isolation mode asked for (no silent fallback).  Configurations:

* the default limits under both kernel isolations (fixture ``mode``: bubblewrap, and the namespace fallback used
  without bwrap, forced through ``LATENTMAS_SANDBOX_ISOLATION``) -- what the scorer uses;
* ``isolation="basic"`` -- rlimits + audit hook + evalplus's reliability_guard only (no bwrap, not root);
* ``python_guards=False`` under bwrap and under namespaces (fixture ``kernel``) -- what the kernel layers contain
  on their own, including the fallback's documented leaks.

Plus positive controls, a differential test against evalplus's own ``untrusted_check``, the mode choice and its
fallback, and unit tests of the decoder / canonical encoding / cache.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from latentmas.eval import sandbox
from latentmas.eval.sandbox import CodeVerdict, SandboxError, SandboxLimits, check_solution, wire
from latentmas.eval.sandbox import expected as sandbox_expected
from latentmas.eval.sandbox import namespaces as sandbox_namespaces

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
HOSTILE = Path(__file__).resolve().parent / "hostile"
HUMANEVAL_FILE = REPO / "data" / "humanevalplus" / "HumanEvalPlus.jsonl.gz"
MBPP_FILE = REPO / "data" / "mbppplus" / "MbppPlus.jsonl.gz"
IS_ROOT = os.geteuid() == 0
MAX_WALL_S = 30.0


# ----------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in (HUMANEVAL_FILE, MBPP_FILE):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                p = json.loads(line)
                out[p["task_id"]] = p
    return out


def dataset_of(task_id: str) -> str:
    return "humaneval" if task_id.startswith("HumanEval/") else "mbpp"


@pytest.fixture()
def canary(tmp_path):
    """A file outside the sandbox directory (under the test's tmp dir) that hostile code tries to destroy."""
    path = tmp_path / "canary.txt"
    path.write_text("canary\n")
    return path


@pytest.fixture()
def visible_dir():
    """A root-owned, world-readable directory outside every directory full isolation hides (/tmp, /var/tmp,
    /dev/shm, /run, /root — and the checkout itself may live under one of them, as CI clones can): the kernel-layer
    tests show the uid drop, not the private mounts, protects it.  Removed afterwards."""
    hidden = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/root")
    bases = [HOSTILE, Path("/srv"), Path("/var/lib"), Path("/opt")]
    usable = [b for b in bases if b.is_dir() and os.access(b, os.W_OK) and not str(b.resolve()).startswith(hidden)]
    if not usable:
        pytest.skip("no writable directory outside the ones full isolation hides")
    base = usable[0]
    d = Path(tempfile.mkdtemp(prefix=".latentmas-canary-", dir=base))
    try:
        d.chmod(0o755)
        c = d / "canary.txt"
        c.write_text("canary\n")
        c.chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def assert_no_connection(srv: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = srv.accept()
        conn.close()


def load_hostile(name: str, **subs: str) -> tuple[str, str]:
    text = (HOSTILE / f"{name}.py").read_text()
    first = text.splitlines()[0]
    assert first.startswith("# task: "), name
    for key, value in subs.items():
        text = text.replace("{{" + key + "}}", str(value))
    assert "{{" not in text, f"{name}: unfilled placeholder"
    return first[len("# task: "):].strip(), text


def sandbox_leftovers() -> list[psutil.Process]:
    """Processes running as a sandbox uid (full isolation picks uids in [1e9, 2e9)) that escaped their supervisor:
    re-parented to init. A sandbox still under its own supervisor (another scorer or test session running at the
    same time on this machine) is not a leak of this test's runs."""
    left = []
    for p in psutil.process_iter(["uids", "status"]):
        try:
            if p.info["uids"] is not None and p.info["uids"].real >= 1_000_000_000 and _escaped(p):
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


def _escaped(p: psutil.Process) -> bool:
    """True unless some ancestor below init runs as a normal (non-sandbox) uid, i.e. a supervisor still holds it."""
    for parent in p.parents():
        if parent.pid != 1 and parent.uids().real < 1_000_000_000:
            return False
    return True


def my_children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


HAS_BWRAP = shutil.which("bwrap") is not None
HAS_SECCOMP = HAS_BWRAP and sandbox.seccomp.bpf_program() is not None
# The two kernel-level isolations the hostile suite runs under: bubblewrap, and the fallback used without it.
ISOLATIONS = [
    pytest.param("bwrap", marks=pytest.mark.skipif(not HAS_BWRAP, reason="bwrap missing (apt-get install bubblewrap)")),
    pytest.param("namespaces", marks=pytest.mark.skipif(not IS_ROOT, reason="the namespace fallback needs root")),
]
BWRAP_MODE = "bwrap+seccomp" if HAS_SECCOMP else "bwrap"


def recorded_mode(isolation: str) -> str:
    return BWRAP_MODE if isolation == "bwrap" else isolation


@pytest.fixture(params=ISOLATIONS)
def mode(request, monkeypatch):
    """Runs the test under bwrap and under the namespace fallback, forced the documented way (the environment
    variable that replaces isolation="auto")."""
    monkeypatch.setenv(sandbox.ENV_VAR, request.param)
    return request.param


def score(problems, name: str, limits: SandboxLimits | None = None, **subs) -> CodeVerdict:
    task_id, code = load_hostile(name, **subs)
    forced = os.environ.get(sandbox.ENV_VAR)
    pid = os.getpid()
    t0 = time.monotonic()
    verdict = check_solution(code, problems[task_id], dataset_of(task_id), limits)
    elapsed = time.monotonic() - t0
    assert os.getpid() == pid and psutil.pid_exists(pid)  # the scoring process survived
    assert elapsed < MAX_WALL_S, f"{name}: took {elapsed:.1f}s"
    assert my_children() == [], f"{name}: left child processes behind"
    assert isinstance(verdict, CodeVerdict) and verdict.wall_s <= elapsed + 0.5
    iso = limits.isolation if limits is not None and limits.isolation != "auto" else forced
    if iso is not None:  # the run used the isolation asked for (no silent fallback); the verdict records it
        assert verdict.sandbox == recorded_mode(iso), verdict
    return verdict


# ------------------------------------------------------------------------------------- hostile: default configuration
VIOLATION = "error: sandbox violation: "


def test_fork_bomb(mode, problems):
    v = score(problems, "fork_bomb")
    assert not v.passed and v.status == VIOLATION + "os.fork", v


def test_fork_bomb_via_posix(mode, problems):
    v = score(problems, "fork_bomb_posix")
    assert not v.passed and v.status == VIOLATION + "os.fork", v


def test_infinite_loop_hits_the_per_input_limit(mode, problems):
    v = score(problems, "infinite_loop")
    assert not v.passed and v.status == "timeout", v
    assert "base input #0" in v.detail and "per-input limit" in v.detail


def test_infinite_loop_that_swallows_timeouts_hits_the_wall_limit(mode, problems):
    v = score(problems, "infinite_loop_toplevel", SandboxLimits(wall_s=3))
    assert not v.passed and v.status == "timeout", v
    assert 3 <= v.wall_s < 6


def test_huge_allocation(mode, problems):
    v = score(problems, "huge_alloc")
    assert not v.passed and v.status == "memory", v


def test_busy_allocation_loop(mode, problems):
    # a 5 s per-input limit: the memory limit must decide, not the clock (at 1 s a loaded 2-core machine timed out
    # first once in CI, 2026-12-02)
    v = score(problems, "busy_alloc", SandboxLimits(memory_mb=512, min_time_limit=5.0))
    assert not v.passed and v.status == "memory", v


@pytest.mark.parametrize("name", ["delete_canary", "delete_canary_posix", "overwrite_canary"])
def test_destroying_a_file_outside(mode, problems, canary, name):
    v = score(problems, name, CANARY=canary)
    assert not v.passed and v.status.startswith(VIOLATION), v
    assert canary.read_text() == "canary\n"


def test_creating_a_file_outside(mode, problems, tmp_path, canary):
    outside = tmp_path / "created-by-sandbox.txt"
    v = score(problems, "write_outside", OUTSIDE=outside)
    assert not v.passed and v.status == VIOLATION + "open", v
    assert not outside.exists() and canary.read_text() == "canary\n"


def test_socket_to_localhost(mode, problems, listener):
    v = score(problems, "socket_connect", PORT=listener.getsockname()[1])
    assert not v.passed and v.status.startswith(VIOLATION + "socket."), v
    assert_no_connection(listener)


@pytest.mark.parametrize("name,event", [("kill_parent", "os.kill"), ("killpg_parent", "os.killpg"),
                                        ("killpg_self", "os.killpg")])
def test_signals(mode, problems, name, event):
    v = score(problems, name)
    assert not v.passed and v.status == VIOLATION + event, v


def test_sys_exit_before_tests(mode, problems):
    v = score(problems, "sys_exit")
    assert not v.passed and v.status == "error: SystemExit: 0", v


@pytest.mark.parametrize("name", ["os_exit", "os_exit_during_tests"])
def test_os_exit_zero_is_no_pass(mode, problems, name):
    v = score(problems, name)
    assert not v.passed and v.status == "error: exited early (code 0)", v


def test_closing_every_channel_and_spinning(mode, problems):
    v = score(problems, "close_channels")
    assert not v.passed and v.status == "error: closed its result channel", v
    assert v.wall_s < 5


def test_printing_100_mb(mode, problems):
    v = score(problems, "print_100mb")
    assert not v.passed and v.status == "killed", v
    assert "exceeded 1048576 bytes" in v.detail


@pytest.mark.parametrize("name", ["chdir_write", "chdir_write_posix"])
def test_chdir_then_write(mode, problems, name):
    target = f"latentmas-sandbox-test-{os.getpid()}-{name}"
    v = score(problems, name, CHDIR_TARGET=target)
    assert not v.passed and v.status == VIOLATION + "os.chdir", v
    assert not Path("/", target).exists()


def test_monkeypatched_builtins_do_not_pass_a_wrong_answer(mode, problems):
    v = score(problems, "monkeypatch_builtins")
    assert not v.passed and v.status == "failed_tests", v


@pytest.mark.parametrize("name", ["eq_always_true", "eq_always_true_subclass", "mbpp_wrong_type"])
def test_always_equal_objects(mode, problems, name):
    v = score(problems, name)
    assert not v.passed and v.status == "failed_tests", v


@pytest.mark.parametrize("name,event", [("subprocess_touch", "subprocess.Popen"), ("os_system_touch", "os.system")])
def test_subprocess_and_os_system(mode, problems, tmp_path, name, event):
    pwned = tmp_path / "pwned"
    v = score(problems, name, PWNED=pwned)
    assert not v.passed and v.status == VIOLATION + event, v
    assert not pwned.exists()


def test_forged_report_is_not_a_pass(mode, problems):
    v = score(problems, "forge_report")
    assert not v.passed and v.status in ("failed_tests", "error: corrupted report"), v


def test_reading_the_dataset_to_cheat_is_blocked(mode, problems):
    v = score(problems, "read_dataset", DATASET=HUMANEVAL_FILE)
    assert not v.passed and v.status == "failed_tests", v
    assert "PermissionError" in v.detail


def test_ctypes_is_not_importable(mode, problems):
    v = score(problems, "ctypes_escape")
    assert not v.passed and v.status.startswith("error: ImportError"), v


def test_reading_secrets_is_blocked(mode, problems):
    v = score(problems, "read_secret")
    assert not v.passed and v.status == "failed_tests" and "PermissionError" in v.detail, v


# ----------------------------------------------------------------------- hostile: basic isolation (Python layer only)
BASIC = SandboxLimits(isolation="basic")


@pytest.mark.parametrize(
    "name,event",
    [("fork_bomb_posix", "os.fork"), ("delete_canary_posix", "os.remove"), ("overwrite_canary", "open"),
     ("kill_parent", "os.kill"), ("killpg_parent", "os.killpg"), ("os_system_touch", "os.system"),
     ("subprocess_touch", "subprocess.Popen"), ("chdir_write_posix", "os.chdir")],
)
def test_basic_isolation_blocks(problems, canary, tmp_path, name, event):
    pwned = tmp_path / "pwned"
    v = score(problems, name, BASIC, CANARY=canary, PWNED=pwned, CHDIR_TARGET=f"lm-sbx-{os.getpid()}")
    assert not v.passed and v.status == VIOLATION + event, v
    assert canary.read_text() == "canary\n" and not pwned.exists()


def test_basic_isolation_blocks_sockets(problems, listener):
    v = score(problems, "socket_connect", BASIC, PORT=listener.getsockname()[1])
    assert not v.passed and v.status.startswith(VIOLATION + "socket."), v
    assert_no_connection(listener)


def test_basic_isolation_blocks_writes_and_dataset_reads(problems, tmp_path):
    outside = tmp_path / "created.txt"
    v = score(problems, "write_outside", BASIC, OUTSIDE=outside)
    assert v.status == VIOLATION + "open" and not outside.exists(), v
    v = score(problems, "read_dataset", BASIC, DATASET=HUMANEVAL_FILE)
    assert v.status == "failed_tests" and "PermissionError" in v.detail, v


def test_basic_isolation_positive_control(problems):
    p = problems["HumanEval/0"]
    v = check_solution(p["prompt"] + p["canonical_solution"], p, "humaneval", BASIC)
    assert v.passed and v.status == "pass", v


# ------------------------------------------------------------------------------------ kernel layers alone (no guards)
# Each test runs the program with the Python guards off (reliability_guard, tripwires, audit hook), once under
# bubblewrap and once under the namespace fallback, and asserts what each kernel layer does: "contained" where
# docs/RELIABILITY.md claims it, and the leak itself where the fallback is documented as NOT containing it.
HIDDEN_BY_NAMESPACES = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/root")


@pytest.fixture(params=ISOLATIONS)
def kernel(request) -> str:
    return request.param


def kscore(problems, kernel: str, name: str, **subs) -> CodeVerdict:
    v = score(problems, name, SandboxLimits(isolation=kernel, python_guards=False), **subs)
    assert not v.passed or name == "read_dataset", v
    return v


def test_kernel_nproc_stops_fork(problems, kernel):
    v = kscore(problems, kernel, "fork_bomb")
    assert v.status == "failed_tests" and "BlockingIOError" in v.detail, v
    assert sandbox_leftovers() == []


@pytest.mark.parametrize("name", ["delete_canary", "overwrite_canary"])
def test_kernel_protects_files(problems, kernel, visible_dir, name):
    """namespaces: the uid drop (EACCES); bwrap: the file is not even in the sandbox's mount namespace."""
    canary = visible_dir / "canary.txt"
    v = kscore(problems, kernel, name, CANARY=canary)
    want = "FileNotFoundError" if kernel == "bwrap" else "PermissionError"
    assert v.status == "failed_tests" and want in v.detail, v
    assert canary.read_text() == "canary\n"


def test_kernel_blocks_creating_files(problems, kernel, visible_dir):
    outside = visible_dir / "created.txt"
    v = kscore(problems, kernel, "write_outside", OUTSIDE=outside)
    want = "FileNotFoundError" if kernel == "bwrap" else "PermissionError"
    assert want in v.detail and not outside.exists(), v


def test_kernel_private_tmp(problems, kernel, canary, tmp_path):
    """Files under /tmp are not even visible: the sandbox has a private, empty /tmp."""
    outside = tmp_path / "created.txt"
    v = kscore(problems, kernel, "write_outside", OUTSIDE=outside)
    assert "FileNotFoundError" in v.detail and not outside.exists(), v
    v = kscore(problems, kernel, "delete_canary", CANARY=canary)
    assert "FileNotFoundError" in v.detail and canary.read_text() == "canary\n", v


def test_kernel_network_namespace(problems, kernel, listener):
    """namespaces: no interface at all; bwrap: only its own loopback (nothing listens there), and with the seccomp
    filter not even an AF_INET socket."""
    v = kscore(problems, kernel, "socket_connect", PORT=listener.getsockname()[1])
    want = {"namespaces": "Network is unreachable", "bwrap": "ConnectionRefusedError",
            "bwrap+seccomp": "PermissionError"}[recorded_mode(kernel)]
    assert want in v.detail, v
    assert_no_connection(listener)


def test_kernel_signals_to_the_parent(problems, kernel):
    """namespaces: the uid drop (EPERM).  bwrap: getppid() is the PID namespace's init, which ignores the signal."""
    for name in ("kill_parent", "killpg_parent"):
        v = kscore(problems, kernel, name)
        if kernel == "namespaces":
            assert "PermissionError" in v.detail, v
        else:
            assert v.status in ("failed_tests", "killed"), v


def test_kernel_cannot_signal_the_scorer_by_pid(problems, kernel):
    """New with bwrap: the scorer's pid does not exist in the sandbox's PID namespace (namespaces: EPERM)."""
    v = kscore(problems, kernel, "kill_scorer", SCORER_PID=os.getpid())
    want = "ProcessLookupError" if kernel == "bwrap" else "PermissionError"
    assert v.status == "failed_tests" and want in v.detail, v


def test_kernel_killpg_self_only_kills_the_sandbox(problems, kernel):
    v = kscore(problems, kernel, "killpg_self")
    assert v.status == "killed" and "SIGKILL" in v.detail, v


def test_kernel_chdir_then_write(problems, kernel):
    target = f"latentmas-sandbox-test-{os.getpid()}"
    v = kscore(problems, kernel, "chdir_write", CHDIR_TARGET=target)
    assert any(e in v.detail for e in ("PermissionError", "FileNotFoundError", "Read-only file system")), v
    assert not Path("/", target).exists()


def test_kernel_os_system_cannot_fork(problems, kernel, visible_dir):
    pwned = visible_dir / "pwned"
    v = kscore(problems, kernel, "os_system_touch", PWNED=pwned)
    assert not pwned.exists(), v


def test_kernel_ctypes_cannot_kill_the_parent(problems, kernel):
    v = kscore(problems, kernel, "ctypes_escape")
    assert v.status == "failed_tests", v  # libc.kill returned -1 (EPERM) or hit the namespace's init; we are alive


def test_kernel_secrets_unreadable(problems, kernel):
    v = kscore(problems, kernel, "read_secret")
    want = "FileNotFoundError" if kernel == "bwrap" else "PermissionError"
    assert want in v.detail, v


def test_kernel_proc_of_the_scorer(problems, kernel):
    """New with bwrap: another process's /proc entries (command line, environment, memory) do not exist in the
    sandbox's PID namespace.  The fallback protects environ and mem (ptrace access check after the uid drop) but
    NOT the world-readable cmdline: the test asserts that documented leak."""
    v = kscore(problems, kernel, "proc_mem_scorer", SCORER_PID=os.getpid())
    want = "FileNotFoundError" if kernel == "bwrap" else "PermissionError"
    assert v.status == "failed_tests" and want in v.detail and "LEAKED" not in v.detail, v
    v = kscore(problems, kernel, "proc_read_scorer", SCORER_PID=os.getpid())
    if kernel == "bwrap":
        assert "FileNotFoundError" in v.detail and "LEAKED" not in v.detail, v
    else:
        assert "LEAKED cmdline=" in v.detail and "PermissionError" in v.detail, v  # environ: EACCES


def test_kernel_dataset_hidden(problems, kernel):
    """New with bwrap: the checkout (with the datasets that hold the canonical solutions) is not mounted.  The
    fallback hides it only where it lies under a covered directory; elsewhere the documented leak is asserted:
    a program outside the Python layer reads the canonical solution and passes."""
    v = kscore(problems, kernel, "read_dataset", DATASET=HUMANEVAL_FILE)
    path = str(HUMANEVAL_FILE.resolve())
    covered = path.startswith(HIDDEN_BY_NAMESPACES) or sandbox_namespaces._hidden_ancestor(path) is not None
    if kernel == "bwrap" or covered:
        assert not v.passed and "FileNotFoundError" in v.detail, v
    else:
        assert v.passed, v


def test_kernel_user_namespaces(problems, kernel):
    """bwrap closes user-namespace creation (seccomp denies unshare/clone with CLONE_NEW*; unprivileged bwrap also
    sets --disable-userns).  The fallback and privileged bwrap without the filter do not close it: there the outcome
    is the host's policy (user.max_user_namespaces etc.), so only that the run ends as a failure is asserted."""
    v = kscore(problems, kernel, "unshare_userns")
    contained = recorded_mode(kernel) == "bwrap+seccomp" or (kernel == "bwrap" and not IS_ROOT)
    if contained:
        assert "LEAKED" not in v.detail and "unshare(CLONE_NEWUSER) failed" in v.detail, v
    else:
        assert "LEAKED" in v.detail or "unshare(CLONE_NEWUSER) failed" in v.detail, v


def test_kernel_ptrace(problems, kernel):
    """Only the seccomp filter denies ptrace itself (the PID namespace / uid drop limit whom it can reach)."""
    v = kscore(problems, kernel, "ptrace_traceme")
    if recorded_mode(kernel) == "bwrap+seccomp":
        assert "ptrace failed: Operation not permitted" in v.detail, v
    else:
        assert "LEAKED: ptrace is available" in v.detail, v


def test_guards_block_the_new_proc_and_signal_programs(mode, problems):
    """With the Python guards on (the default), the new programs are stopped in the Python layer as well."""
    v = score(problems, "proc_read_scorer", SCORER_PID=os.getpid())
    assert v.status == "failed_tests" and "PermissionError" in v.detail and "LEAKED" not in v.detail, v
    v = score(problems, "proc_mem_scorer", SCORER_PID=os.getpid())
    assert v.status == "failed_tests" and "PermissionError" in v.detail and "LEAKED" not in v.detail, v
    v = score(problems, "kill_scorer", SCORER_PID=os.getpid())
    assert v.status == VIOLATION + "os.kill", v
    for name in ("unshare_userns", "ptrace_traceme"):
        v = score(problems, name)
        assert v.status.startswith("error: ImportError"), v


def test_output_cap_does_not_depend_on_python_guards(problems):
    lim = SandboxLimits(isolation="bwrap" if HAS_BWRAP else "namespaces" if IS_ROOT else "basic", python_guards=False)
    v = score(problems, "print_100mb", lim)
    assert not v.passed and v.status == "killed" and "exceeded" in v.detail, v


# -------------------------------------------------------------------------------------------------- positive controls
@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/2", "HumanEval/32", "HumanEval/42", "Mbpp/2", "Mbpp/88",
                                     "Mbpp/124", "Mbpp/581", "Mbpp/787"])
def test_canonical_solutions_pass(mode, problems, task_id):
    p = problems[task_id]
    v = check_solution(p["prompt"] + p["canonical_solution"], p, dataset_of(task_id))
    assert v.passed and v.status == "pass", v
    assert my_children() == []


def test_wrong_solution_fails(problems):
    p = problems["HumanEval/0"]
    v = check_solution(p["prompt"] + "    return False\n", p, "humaneval")
    assert not v.passed and v.status == "failed_tests" and "expected True" in v.detail, v


def test_syntax_error(problems):
    p = problems["HumanEval/0"]
    v = check_solution("def has_close_elements(numbers, threshold)\n    return True\n", p, "humaneval")
    assert not v.passed and v.status.startswith("error: SyntaxError"), v


def test_missing_entry_point_and_empty_code(problems):
    p = problems["Mbpp/2"]
    v = check_solution("def shared(a, b):\n    return ()\n", p, "mbpp")
    assert not v.passed and v.status == "error: NameError: entry point 'similar_elements' is not defined", v
    for empty in ("", "   \n", None):
        v = check_solution(empty, p, "mbpp")  # type: ignore[arg-type]
        assert not v.passed and v.status == "error: no code", v


def test_bad_arguments_raise(problems):
    p = problems["HumanEval/0"]
    with pytest.raises(ValueError):
        check_solution("x = 1", p, "apps")
    with pytest.raises(ValueError):
        check_solution("x = 1", {"task_id": "x"}, "humaneval")


def test_exception_in_solution_is_failed_tests(problems):
    p = problems["HumanEval/0"]
    v = check_solution(p["prompt"] + "    raise ValueError('nope')\n", p, "humaneval")
    assert v.status == "failed_tests" and "ValueError: nope" in v.detail, v


# ---------------------------------------------------------------------------------- evalplus semantics (differential)
DIFFERENTIAL = [
    ("HumanEval/2", "def truncate_number(number):\n    return number - int(number)\n"),
    ("HumanEval/2", "def truncate_number(number):\n    return number - int(number) + 5e-7\n"),  # within atol
    ("HumanEval/2", "def truncate_number(number):\n    return number - int(number) + 1e-3\n"),
    ("HumanEval/2", "import numpy as np\ndef truncate_number(number):\n    return np.float64(number - int(number))\n"),
    ("HumanEval/2", "import numpy as np\ndef truncate_number(number):\n"
                    "    return np.float64(number - int(number) + 5e-7)\n"),  # atol path demands type(out) == float
    ("HumanEval/42", "def incr_list(l):\n    return [float(x + 1) for x in l]\n"),  # 2.0 == 2
    ("HumanEval/42", "def incr_list(l):\n    return tuple(x + 1 for x in l)\n"),  # tuple != list
    ("HumanEval/42", "import numpy as np\ndef incr_list(l):\n    return [np.int64(x) + 1 for x in l]\n"),
    ("HumanEval/32", "def find_zero(xs):\n    return 0.0\n"),
    ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"),  # set oracle
    ("Mbpp/2", "def similar_elements(a, b):\n    return ()\n"),
    ("Mbpp/88", "def freq_count(xs):\n    d = {}\n    for x in xs:\n        d[x] = d.get(x, 0) + 1\n    return d\n"),
    ("Mbpp/98", "def multiply_num(numbers):\n    p = 1\n    for x in numbers:\n        p *= x\n"
                "    return p / len(numbers) * (1 + 1e-12)\n"),
    ("Mbpp/787", "import re\ndef text_match_three(text):\n    return bool(re.search('ab{3}?', text))\n"),
    ("Mbpp/787", "def text_match_three(text):\n    return 'abbb' in text\n"),
]


def _evalplus_verdict(problem: dict, dataset: str, solution: str) -> bool:
    """evalplus 0.3.1's own verdict: untrusted_check on base and plus inputs with fast_check, as its evaluate()."""
    from evalplus.eval import PASS, untrusted_check
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.gen.util import trusted_exec

    base, plus = sandbox_expected._problem_inputs(problem, dataset)
    ok = True
    for inputs in (base, plus):
        exp, ref = trusted_exec(problem["prompt"] + problem["canonical_solution"], inputs, problem["entry_point"],
                                record_time=True, output_not_none=problem["entry_point"] in MBPP_OUTPUT_NOT_NONE_TASKS)
        stat, _ = untrusted_check(dataset, solution, inputs, problem["entry_point"], expected=exp,
                                  atol=problem["atol"], ref_time=ref, fast_check=True)
        ok = ok and stat == PASS
    return ok


@pytest.mark.parametrize("task_id,solution", DIFFERENTIAL, ids=[f"{t}-{i}" for i, (t, _) in enumerate(DIFFERENTIAL)])
def test_same_verdict_as_evalplus(problems, task_id, solution):
    p = problems[task_id]
    ours = check_solution(solution, p, dataset_of(task_id))
    theirs = _evalplus_verdict(p, dataset_of(task_id), solution)
    assert ours.passed == theirs, (ours, theirs)


def test_differential_cases_are_not_trivial(problems):
    """The differential table contains both passes and failures under evalplus (guards against a vacuous test)."""
    verdicts = {_evalplus_verdict(problems[t], dataset_of(t), s) for t, s in DIFFERENTIAL[:3]}
    assert verdicts == {True, False}


def test_find_zero_follows_the_oracle_not_evalplus_0_3_1(problems):
    """Known deviation: evalplus 0.3.1's `continue` after the find_zero oracle skips its pass bookkeeping, so it
    fails HumanEval/32 even for the canonical solution.  We record an input as passed when |poly(x)| <= atol."""
    p = problems["HumanEval/32"]
    canonical = p["prompt"] + p["canonical_solution"]
    assert _evalplus_verdict(p, "humaneval", canonical) is False
    assert check_solution(canonical, p, "humaneval").passed
    wrong = p["prompt"] + "    return 0.0\n"
    assert not check_solution(wrong, p, "humaneval").passed


def test_evalplus_itself_is_fooled_where_we_are_not(problems):
    """The motivating gap: evalplus's in-process `==` accepts an always-equal object; the sandbox does not."""
    task_id, code = load_hostile("eq_always_true")
    p = problems[task_id]
    assert _evalplus_verdict(p, "humaneval", code) is True
    assert check_solution(code, p, "humaneval").status == "failed_tests"


# ----------------------------------------------------------------------------------------------------------- no leaks
def test_no_leaked_processes_over_many_runs(mode, problems, monkeypatch):
    sandbox.expected_outputs(problems["HumanEval/0"], "humaneval")  # cached: each check below is one sandbox run
    created: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy_mkdtemp(*a, **k):
        created.append(real_mkdtemp(*a, **k))
        return created[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", spy_mkdtemp)

    def zombies() -> int:
        return sum(1 for c in my_children() if c.status() == psutil.STATUS_ZOMBIE)

    before_children, before_fds = len(my_children()), psutil.Process().num_fds()
    p = problems["HumanEval/0"]
    canonical = p["prompt"] + p["canonical_solution"]
    programs = [canonical] + [load_hostile(n)[1] for n in ("fork_bomb", "infinite_loop", "killpg_self", "os_exit",
                                                           "print_100mb")]
    statuses = []
    for _ in range(2):
        for code in programs:
            statuses.append(check_solution(code, p, "humaneval").status)
            assert zombies() == 0
    assert statuses.count("pass") == 2 and len(set(statuses)) == 6, statuses
    assert len(my_children()) == before_children == 0
    assert psutil.Process().num_fds() == before_fds
    assert sandbox_leftovers() == []
    assert len(created) == len(statuses) and not any(os.path.exists(d) for d in created)  # work dirs removed


# ------------------------------------------------------------------------------- units: limits, decoder, canon, cache
def test_limit_defaults_follow_evalplus():
    from evalplus.config import DEFAULT_GT_TIME_LIMIT_FACTOR, DEFAULT_MIN_TIME_LIMIT
    from evalplus.eval import query_maximum_memory_bytes

    r = SandboxLimits().resolved()
    assert r.min_time_limit == DEFAULT_MIN_TIME_LIMIT and r.gt_time_limit_factor == DEFAULT_GT_TIME_LIMIT_FACTOR
    assert r.memory_mb == query_maximum_memory_bytes() >> 20
    assert r.max_output_bytes == 1 << 20 and r.nproc == 1 and r.timeout_per_phase_s == 60


def test_decoder_round_trips_plain_data_and_rejects_everything_else():
    import io
    import pickle

    class Exact(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is complex or obj is Ellipsis or obj is complex:
                return NotImplemented
            raise ValueError

    def enc(v):
        buf = io.BytesIO()
        p = Exact(buf, protocol=4)
        p.fast = True
        p.dump(v)
        return buf.getvalue()

    values = [None, True, 0, -1, 2 ** 31, -(10 ** 5000), 1.5, -0.0, float("inf"), "é\ud800", b"\x00", (), (1, (2,)),
              [1] * 2500, {1: "a", (1, 2): [3.5]}, {1, 2}, frozenset({"x"}), 1 - 2j, Ellipsis,
              {"k": [{1: (frozenset(), set(range(1500)))}]}]
    for v in values:
        d = wire._safe_unpickle(enc(v))
        assert d == v and type(d) is type(v)
    hostile = [pickle.dumps(os.system), b"\x80\x04cos\nsystem\n(S'true'\ntR.", pickle.dumps([1, 2]),
               b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.", b"(((((", enc([1])[:-1]]
    nested: list = []
    cur = nested
    for _ in range(wire.DECODE_MAX_DEPTH + 5):
        cur.append([])
        cur = cur[0]
    hostile.append(enc(nested))
    for blob in hostile:
        with pytest.raises(wire._DecodeError):
            wire._safe_unpickle(blob)


def test_canonical_encoding_is_python_equality():
    c = lambda v: wire._canon(v)[0]  # noqa: E731
    assert c(1) == c(1.0) == c(True) == c(1 + 0j)
    assert c([1, 2.0]) == c([1.0, 2]) and c((1,)) != c([1])
    assert c({1: "a", 2: "b"}) == c({2: "b", 1: "a"}) and c({1, 2}) == c(frozenset({2, 1}))
    assert c(0.1) != c(0.1 + 1e-17 * 0 + 5e-17) or 0.1 == 0.1 + 5e-17
    assert c(2 ** 53 + 1) != c(float(2 ** 53))
    assert c("a") != c(b"a") and c(-0.0) == c(0)
    assert wire._canon([float("nan")])[1] is True and wire._canon([1.0])[1] is False


def test_expected_outputs_disk_cache(problems, tmp_path, monkeypatch):
    p = problems["HumanEval/42"]
    lim = SandboxLimits(expected_cache_dir=str(tmp_path))
    sandbox.clear_expected_cache()
    first = check_solution(p["prompt"] + p["canonical_solution"], p, "humaneval", lim)
    files = list(tmp_path.glob("*.json"))
    assert first.passed and len(files) == 1
    sandbox.clear_expected_cache()

    def no_recompute(*a, **k):
        raise AssertionError("expected outputs were recomputed despite the cache")

    monkeypatch.setattr(sandbox_expected, "_compute_expected", no_recompute)
    assert check_solution(p["prompt"] + p["canonical_solution"], p, "humaneval", lim).passed
    # a tampered cache entry is rejected (digest check) and recomputed
    sandbox.clear_expected_cache()
    data = json.loads(files[0].read_text())
    first_small = next(o for o in data["outputs"] if o["b"])
    first_small["h"] = hashlib.sha256(b"tampered").hexdigest()
    files[0].write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="recomputed"):
        check_solution(p["prompt"] + p["canonical_solution"], p, "humaneval", lim)
    sandbox.clear_expected_cache()


def test_broken_canonical_solution_raises_sandbox_error(problems):
    p = dict(problems["HumanEval/0"])
    p["canonical_solution"] = "    raise RuntimeError('broken reference')\n"
    with pytest.raises(SandboxError, match="canonical solution raised"):
        check_solution(p["prompt"] + "    return True\n", p, "humaneval")


# ------------------------------------------------------------------------------------------- isolation mode choice
from latentmas.eval.sandbox import isolation as sandbox_isolation  # noqa: E402
from latentmas.eval.sandbox import seccomp as sandbox_seccomp  # noqa: E402


@pytest.fixture()
def broken_bwrap(tmp_path, monkeypatch):
    """A `bwrap` that fails the way bubblewrap does when it cannot set up (message on stderr, exit 1)."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox_isolation, "bwrap_path", lambda: str(fake))
    monkeypatch.setattr(sandbox_isolation, "_FALLBACK", {})
    monkeypatch.delenv(sandbox.ENV_VAR, raising=False)


def test_auto_falls_back_when_bwrap_cannot_start_and_records_it(problems, broken_bwrap):
    """A scorer that kept reporting "bwrap" after a fallback, or failed instead of degrading, is caught here."""
    p = problems["HumanEval/0"]
    canonical = p["prompt"] + p["canonical_solution"]
    assert sandbox.isolation_mode() == BWRAP_MODE  # before any run: bwrap is planned
    with pytest.warns(RuntimeWarning, match="bwrap isolation unavailable"):
        v = check_solution(canonical, p, "humaneval")
    fallback = "namespaces" if IS_ROOT else "basic"
    assert v.passed and v.sandbox == fallback == sandbox.isolation_mode(), v


def test_explicit_bwrap_does_not_fall_back(problems, broken_bwrap):
    p = problems["HumanEval/0"]
    with pytest.raises(SandboxError, match="bwrap"):
        check_solution(p["prompt"] + "    return True\n", p, "humaneval", SandboxLimits(isolation="bwrap"))


@pytest.mark.skipif(not HAS_BWRAP, reason="bwrap missing")
def test_without_libseccomp_bwrap_runs_and_is_recorded_as_plain_bwrap(problems, monkeypatch):
    """Degrading cleanly: no filter, the mode says so, and ptrace is then not denied (the filter was what denied it)."""
    monkeypatch.setattr(sandbox_seccomp, "_PROGRAM", [None])
    task_id, code = load_hostile("ptrace_traceme")
    v = check_solution(code, problems[task_id], "humaneval", SandboxLimits(isolation="bwrap", python_guards=False))
    assert v.sandbox == "bwrap" and "LEAKED: ptrace is available" in v.detail, v


def test_isolation_choice_is_validated(monkeypatch):
    monkeypatch.setenv(sandbox.ENV_VAR, "docker")
    with pytest.raises(ValueError, match=sandbox.ENV_VAR):
        sandbox.isolation_mode()
    monkeypatch.setenv(sandbox.ENV_VAR, "basic")
    assert sandbox.isolation_mode() == "basic"
    if IS_ROOT:
        assert sandbox.isolation_mode(SandboxLimits(isolation="full")) == "namespaces"  # the old name still works
    with pytest.raises(ValueError, match="isolation"):
        sandbox.isolation_mode(SandboxLimits(isolation="strong"))


def test_harness_sources_are_the_package_files():
    """The child runs the modules' own files (captured at import), in dependency order."""
    from latentmas.eval.sandbox import supervisor

    here = Path(sandbox.__file__).parent
    assert [n for n, _ in supervisor.HARNESS_SOURCES] == ["wire", "guards", "namespaces", "child"]
    for name, text in supervisor.HARNESS_SOURCES:
        assert text == (here / f"{name}.py").read_text(encoding="utf-8")
