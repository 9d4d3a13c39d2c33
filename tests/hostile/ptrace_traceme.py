# task: HumanEval/0
# Uses ptrace, the debugging interface (reading/writing other processes' memory and registers).
import ctypes
from typing import List

PTRACE_TRACEME = 0


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(PTRACE_TRACEME, 0, None, None) == 0:
        raise RuntimeError("LEAKED: ptrace is available")
    err = ctypes.get_errno()
    raise OSError(err, "ptrace failed: " + __import__("os").strerror(err))
