# task: HumanEval/0
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    table = [0] * (10 ** 10)  # 80 GB
    return bool(table)
