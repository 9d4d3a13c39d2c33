# task: HumanEval/0
import socket
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    conn = socket.create_connection(("127.0.0.1", {{PORT}}), timeout=2)
    conn.sendall(b"pwned")
    conn.close()
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False
