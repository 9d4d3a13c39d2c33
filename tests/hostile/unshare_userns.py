# task: HumanEval/0
# Creates a user namespace (and so gains capabilities inside it: the usual first step of a kernel exploit).
import ctypes
from typing import List

CLONE_NEWUSER = 0x10000000


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) == 0:
        raise RuntimeError("LEAKED: created a user namespace")
    err = ctypes.get_errno()
    raise OSError(err, "unshare(CLONE_NEWUSER) failed: " + __import__("os").strerror(err))
