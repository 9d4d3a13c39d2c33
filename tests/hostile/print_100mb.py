# task: HumanEval/0
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    print("x" * 100_000_000)
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False
