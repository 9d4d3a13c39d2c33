# task: HumanEval/0
import io
import posix
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    posix.chdir("/")
    with io.open("{{CHDIR_TARGET}}", "w") as f:
        f.write("pwned")
    return False
